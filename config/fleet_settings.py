"""Settings of a simulated fleet's hardware: device tiers and their shares (``[fleet]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stamen.config.checks import require, require_member
from stamen.config.tiers import BUILTIN_TIERS, FleetPreset, TierProfile
from stamen.core.errors import ConfigError


@dataclass(frozen=True)
class TierShare:
    """A device tier of a custom fleet and the share of devices it takes."""

    profile: TierProfile
    share: float

    def __post_init__(self) -> None:
        require(self.share > 0, f"fleet.tiers.{self.profile.name}.share", "> 0", self.share)


@dataclass(frozen=True)
class FleetSettings:
    """The hardware mix of a simulated fleet: device tiers and their shares."""

    preset: FleetPreset = FleetPreset.MIXED
    tiers: tuple[TierShare, ...] = ()
    """The tiers of a ``custom`` fleet, from ``[fleet.tiers.NAME]`` tables."""

    def __post_init__(self) -> None:
        require_member(self, "preset", FleetPreset, "fleet.preset")
        if self.tiers and self.preset is not FleetPreset.CUSTOM:
            raise ConfigError(
                f"fleet.tiers tables define a custom fleet; set fleet.preset = "
                f"'custom' (it is {self.preset.value!r})"
            )
        if self.preset is FleetPreset.CUSTOM and not self.tiers:
            raise ConfigError("fleet.preset custom needs at least one [fleet.tiers.NAME] table")


def tier_share(name: str, values: dict[str, Any]) -> TierShare:
    """Build a custom tier from its TOML table; a built-in name inherits that tier's values."""
    fields = dict(values)
    if "share" not in fields:
        raise ConfigError(f"fleet.tiers.{name}.share is missing: each tier needs its share")
    share = fields.pop("share")
    base = BUILTIN_TIERS.get(name)
    known = set(TierProfile.__dataclass_fields__) - {"name"}
    unknown = set(fields) - known
    if unknown:
        raise ConfigError(
            f"unknown key 'fleet.tiers.{name}.{sorted(unknown)[0]}'; allowed: share, "
            + ", ".join(sorted(known))
        )
    if base is None:
        missing = {"gflops", "memory_mb", "uplink_kbps", "downlink_kbps"} - set(fields)
        if missing:
            raise ConfigError(
                f"fleet.tiers.{name} is not a built-in tier, so it needs "
                + ", ".join(sorted(missing))
            )
        defaults: dict[str, Any] = {}
    else:
        defaults = {key: getattr(base, key) for key in known}
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"fleet.tiers.{name}.{key} must be a number; got {value!r}")
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise ConfigError(f"fleet.tiers.{name}.share must be a number; got {share!r}")
    merged = {key: float(value) for key, value in {**defaults, **fields}.items()}
    return TierShare(TierProfile(name=name, **merged), float(share))
