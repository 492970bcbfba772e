"""The ``[privacy]`` section: secure aggregation and client-level differential privacy.

``secure_aggregation`` makes the server learn only the sum of each round's updates
(SecAgg with SecAgg+'s neighbour graph), still compressed: a public random share of
the coordinates (``coordinate_ratio``), each a ``modulus_bits``-bit residue. ``mode``
adds differential privacy at the device level: ``central``, where the trusted server
adds Gaussian noise to the clipped sum, or ``distributed``, where each device adds its
share of Skellam noise under secure aggregation, so that nobody, the server included,
sees an update without noise. docs/privacy.md states the threat model.

Examples:
    >>> PrivacySettings(mode="distributed", secure_aggregation=True).mode.value
    'distributed'
    >>> PrivacySettings(mode="distributed")
    Traceback (most recent call last):
    ...
    stamen.core.errors.ConfigError: privacy.mode distributed needs privacy.secure_aggregation = true
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stamen.config.checks import require, require_member
from stamen.core.errors import ConfigError


class CoordinateRule(enum.StrEnum):
    """Which coordinates every device of a secure-aggregation round sends."""

    RANDOM = "random"
    """A random subset seeded by the run and the round: no index travels."""
    GLOBAL_CHANGE = "global-change"
    """Half where the global model moved most lately, half random; announced by the server."""


class PrivacyMode(enum.StrEnum):
    """Where the differential-privacy noise is added."""

    OFF = "off"
    CENTRAL = "central"
    """The server clips and adds Gaussian noise: private against everyone but the server."""
    DISTRIBUTED = "distributed"
    """Each device adds Skellam noise under secure aggregation: private against the server too."""


@dataclass(frozen=True)
class PrivacySettings:
    """Secure aggregation and differential privacy for a federation."""

    mode: PrivacyMode = PrivacyMode.OFF
    secure_aggregation: bool = False
    target_epsilon: float = 0.0
    """Where > 0: the noise multiplier is set to spend this epsilon over the run's rounds."""
    delta: float = 1e-5
    """The delta epsilon is stated at."""
    clip: float = 0.5
    """L2 bound on one device's update (DP's sensitivity); without DP, secure aggregation's
    first round's, after which it follows the mean update."""
    noise_multiplier: float = 1.0
    """Noise standard deviation in sensitivities, where no target_epsilon sets it."""
    modulus_bits: int = 16
    """Secure aggregation sums residues modulo 2**modulus_bits; each sent coordinate costs as
    many bits."""
    coordinate_ratio: float = 0.1
    """The share of unpruned coordinates every device sends each round (a public random subset)."""
    coordinates: CoordinateRule = CoordinateRule.GLOBAL_CHANGE
    """How the round's coordinates are chosen: both rules use public information only."""
    threshold_fraction: float = 0.6
    """Shamir threshold as a share of each neighbourhood, and the share of a round's devices
    that must upload for it to be unmasked. Above 1/2, so no server learns both secrets."""
    dropout_tolerance: float = 0.3
    """The dropout between key sharing and upload that the neighbour graph is sized for."""

    def __post_init__(self) -> None:
        key = "privacy."
        require_member(self, "mode", PrivacyMode, key + "mode")
        require_member(self, "coordinates", CoordinateRule, key + "coordinates")
        if self.mode is PrivacyMode.DISTRIBUTED and not self.secure_aggregation:
            raise ConfigError(f"{key}mode distributed needs {key}secure_aggregation = true")
        require(
            self.target_epsilon >= 0,
            key + "target_epsilon",
            ">= 0 (0: use noise_multiplier)",
            self.target_epsilon,
        )
        require(0 < self.delta < 1, key + "delta", "in (0, 1)", self.delta)
        require(self.clip > 0, key + "clip", "> 0", self.clip)
        require(self.noise_multiplier >= 0, key + "noise_multiplier", ">= 0", self.noise_multiplier)
        if self.mode is not PrivacyMode.OFF and self.target_epsilon == 0:
            require(
                self.noise_multiplier > 0,
                key + "noise_multiplier",
                "> 0 with DP on, or set target_epsilon",
                self.noise_multiplier,
            )
        require(
            8 <= self.modulus_bits <= 32,
            key + "modulus_bits",
            "between 8 and 32",
            self.modulus_bits,
        )
        require(
            0 < self.coordinate_ratio <= 1,
            key + "coordinate_ratio",
            "in (0, 1]",
            self.coordinate_ratio,
        )
        require(
            0.5 < self.threshold_fraction <= 1,
            key + "threshold_fraction",
            "in (0.5, 1]",
            self.threshold_fraction,
        )
        require(
            0 <= self.dropout_tolerance < 1 - self.threshold_fraction + 1e-9,
            key + "dropout_tolerance",
            f"in [0, 1 - threshold_fraction] (at most {1 - self.threshold_fraction:.2f})",
            self.dropout_tolerance,
        )

    @property
    def dp(self) -> bool:
        """Whether differential privacy is on."""
        return self.mode is not PrivacyMode.OFF
