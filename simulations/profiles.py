"""Fleets: each virtual device's tier, and how long it takes to train and talk.

A virtual device belongs to one tier (:mod:`stamen.config.tiers`). The tier
fixes its compute speed, memory, link bandwidths, how often it is online, and
how likely it is to drop out of a round. A fleet is a mix of tiers with shares;
each device's tier is a pure function of the seed and its partition id, so every
process agrees on it and a fleet costs one byte per registered device. Who is online
and who drops out are drawn for the whole fleet at once, as arrays: about 23 bytes per
registered device for the moment of the draw, and nothing kept.

Examples:
    >>> from stamen.config import FleetPreset, fleet_mix
    >>> fleet = build_fleet(fleet_mix(FleetPreset.MIXED), num_devices=1000, seed=0)
    >>> sorted(fleet.tier_counts().items())
    [('iot', 350), ('mcu', 150), ('phone', 500)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stamen.config import FleetMix, TierProfile
from stamen.core.errors import ConfigError

AVAILABILITY_WINDOW = 600.0
"""Seconds per availability window: a device is online or not for a whole window."""


@dataclass(frozen=True)
class Fleet:
    """Which tier each device has, and where the fleet stands on the clock.

    ``tier_index[i]`` is the tier of partition ``i``. Online status and
    dropouts are drawn from counter-based random streams keyed by the seed, so
    they need no per-device state and repeat exactly.
    """

    mix: FleetMix
    tier_index: np.ndarray
    seed: int

    @property
    def num_devices(self) -> int:
        """How many devices the fleet has."""
        return int(self.tier_index.shape[0])

    def tier(self, partition_id: int) -> TierProfile:
        """The tier of device ``partition_id``."""
        return self.mix.tiers[int(self.tier_index[partition_id])]

    def tier_counts(self) -> dict[str, int]:
        """How many devices each tier has."""
        counts = np.bincount(self.tier_index, minlength=len(self.mix.tiers)).tolist()
        return {tier.name: n for tier, n in zip(self.mix.tiers, counts, strict=True) if n}

    def online(self, clock: float) -> np.ndarray:
        """Partition ids online at simulated time ``clock`` (sorted)."""
        window = int(clock // AVAILABILITY_WINDOW)
        draws = _uniform(self.seed, 1, window, self.num_devices)
        availability = np.array([t.availability for t in self.mix.tiers])[self.tier_index]
        return np.flatnonzero(draws < availability)

    def dropouts(self, dispatch: int) -> np.ndarray:
        """Which devices would go away mid-task during exchange number ``dispatch``."""
        draws = _uniform(self.seed, 2, dispatch, self.num_devices)
        dropout = np.array([t.dropout for t in self.mix.tiers])[self.tier_index]
        return draws < dropout


def build_fleet(mix: FleetMix, num_devices: int, seed: int) -> Fleet:
    """Assign each of ``num_devices`` a tier, in proportion to the mix's shares.

    Counts are rounded so they sum to ``num_devices``; which device gets which
    tier is a seeded shuffle, independent of the data partition.
    """
    if num_devices < 1:
        raise ConfigError(f"a fleet needs at least one device; got {num_devices}")
    shares = np.array(mix.shares, dtype=np.float64)
    exact = shares / shares.sum() * num_devices
    counts = np.floor(exact).astype(np.int64)
    # Largest remainders get the devices that rounding down left over.
    for i in np.argsort(-(exact - counts), kind="stable")[: num_devices - int(counts.sum())]:
        counts[i] += 1
    tier_index = np.repeat(np.arange(len(mix.tiers), dtype=np.int8), counts)
    np.random.default_rng([seed, 0]).shuffle(tier_index)
    return Fleet(mix=mix, tier_index=tier_index, seed=seed)


def _uniform(seed: int, stream: int, counter: int, size: int) -> np.ndarray:
    """``size`` uniforms in [0, 1) that depend only on (seed, stream, counter)."""
    return np.random.default_rng([seed, stream, counter]).random(size)
