"""Device tiers and fleet mixes: the hardware a simulated device has, and the shares of a fleet.

The built-in tiers are rough, documented guesses, not measurements of any
product: a microcontroller-class board (``mcu``), a Raspberry-Pi-class IoT
board (``iot``) and a mid-range phone (``phone``). Speeds are sustained
training throughput in GFLOP/s, bandwidths in kbit/s. They live in the config
layer because a config names them (``fleet.preset``, ``[fleet.tiers.NAME]``);
:mod:`stamen.simulations.profiles` turns a mix into a fleet.

Examples:
    >>> phone = BUILTIN_TIERS["phone"]
    >>> round(phone.train_seconds(samples=60, epochs=1, flops_per_sample=2e6), 3)
    0.06
    >>> fleet_mix(FleetPreset.IOT).names
    ('iot', 'mcu')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stamen.core.errors import ConfigError


@dataclass(frozen=True)
class TierProfile:
    """The hardware and connectivity of one class of device."""

    name: str
    gflops: float
    """Sustained training throughput, GFLOP/s."""
    memory_mb: float
    uplink_kbps: float
    downlink_kbps: float
    latency_ms: float = 50.0
    """Round-trip latency added to each transfer."""
    availability: float = 1.0
    """Fraction of time windows in which the device is online (0, 1]."""
    dropout: float = 0.0
    """Probability that a device that took a task goes away before answering."""

    def __post_init__(self) -> None:
        key = f"fleet.tiers.{self.name}"
        positive = {
            "gflops": self.gflops,
            "memory_mb": self.memory_mb,
            "uplink_kbps": self.uplink_kbps,
            "downlink_kbps": self.downlink_kbps,
        }
        for field, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key}.{field} must be > 0; got {value!r}")
        if not self.latency_ms >= 0:
            raise ConfigError(f"{key}.latency_ms must be >= 0; got {self.latency_ms!r}")
        if not 0 < self.availability <= 1:
            raise ConfigError(f"{key}.availability must be in (0, 1]; got {self.availability!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1); got {self.dropout!r}")

    def train_seconds(self, *, samples: int, epochs: int, flops_per_sample: float) -> float:
        """Seconds of local training: ``samples * epochs`` forward and backward passes."""
        return samples * epochs * flops_per_sample / (self.gflops * 1e9)

    def upload_seconds(self, nbytes: int) -> float:
        """Seconds to send ``nbytes`` on the uplink, latency included."""
        return self.latency_ms / 1e3 + nbytes * 8 / (self.uplink_kbps * 1e3)

    def download_seconds(self, nbytes: int) -> float:
        """Seconds to receive ``nbytes`` on the downlink, latency included."""
        return self.latency_ms / 1e3 + nbytes * 8 / (self.downlink_kbps * 1e3)


BUILTIN_TIERS: dict[str, TierProfile] = {
    "mcu": TierProfile(
        "mcu",
        gflops=0.2,
        memory_mb=0.5,
        uplink_kbps=64,
        downlink_kbps=128,
        latency_ms=300,
        availability=0.9,
        dropout=0.1,
    ),
    "iot": TierProfile(
        "iot",
        gflops=0.6,
        memory_mb=1024,
        uplink_kbps=1_000,
        downlink_kbps=4_000,
        latency_ms=80,
        availability=0.95,
        dropout=0.03,
    ),
    "phone": TierProfile(
        "phone",
        gflops=2.0,
        memory_mb=4096,
        uplink_kbps=2_000,
        downlink_kbps=10_000,
        latency_ms=60,
        availability=0.6,
        dropout=0.05,
    ),
}
"""The built-in tiers; ``mcu`` to ``phone`` spans 10x in compute speed."""


class FleetPreset(enum.StrEnum):
    """Named fleet mixes."""

    PHONES = "phones"
    """Every device a phone."""
    MIXED = "mixed"
    """Half phones, a third IoT boards, the rest microcontrollers: a 10x speed spread."""
    IOT = "iot"
    """Boards only: 70% IoT boards and 30% microcontrollers."""
    IDEAL = "ideal"
    """Always online, never drops out, phone-class speed: the textbook setting."""
    CUSTOM = "custom"
    """The tiers of the config's ``[fleet.tiers.NAME]`` tables."""


@dataclass(frozen=True)
class FleetMix:
    """Tiers and the share of the fleet each takes."""

    tiers: tuple[TierProfile, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.tiers or len(self.tiers) != len(self.shares):
            raise ConfigError("a fleet mix needs at least one tier, each with a share")
        if len({tier.name for tier in self.tiers}) != len(self.tiers):
            raise ConfigError("fleet tier names must be unique")
        if any(not share > 0 for share in self.shares):
            raise ConfigError(f"fleet tier shares must be > 0; got {list(self.shares)}")

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names, in order."""
        return tuple(tier.name for tier in self.tiers)


IDEAL_TIER = TierProfile(
    "phone", gflops=2.0, memory_mb=4096, uplink_kbps=2_000, downlink_kbps=10_000
)

PRESET_MIXES: dict[FleetPreset, FleetMix] = {
    FleetPreset.PHONES: FleetMix((BUILTIN_TIERS["phone"],), (1.0,)),
    FleetPreset.MIXED: FleetMix(
        (BUILTIN_TIERS["phone"], BUILTIN_TIERS["iot"], BUILTIN_TIERS["mcu"]), (0.5, 0.35, 0.15)
    ),
    FleetPreset.IOT: FleetMix((BUILTIN_TIERS["iot"], BUILTIN_TIERS["mcu"]), (0.7, 0.3)),
    FleetPreset.IDEAL: FleetMix((IDEAL_TIER,), (1.0,)),
}


def fleet_mix(preset: FleetPreset, custom: tuple[tuple[TierProfile, float], ...] = ()) -> FleetMix:
    """The mix a preset names; ``custom`` supplies the tiers of ``FleetPreset.CUSTOM``.

    Examples:
        >>> fleet_mix(FleetPreset.MIXED).shares
        (0.5, 0.35, 0.15)
        >>> board = TierProfile("board", gflops=1, memory_mb=512, uplink_kbps=500,
        ...                     downlink_kbps=2000)
        >>> fleet_mix(FleetPreset.CUSTOM, ((board, 1.0),)).names
        ('board',)
    """
    if preset is FleetPreset.CUSTOM:
        if not custom:
            raise ConfigError("fleet.preset custom needs at least one [fleet.tiers.NAME] table")
        return FleetMix(tuple(t for t, _ in custom), tuple(s for _, s in custom))
    return PRESET_MIXES[preset]
