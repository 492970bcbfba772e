"""Coordinate-wise trimmed mean of the decoded deltas.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018, https://arxiv.org/abs/1803.01498.

For every coordinate, the largest and the smallest ``trim_fraction`` of the
round's values are dropped and the rest averaged (unweighted, as in the paper).
It tolerates up to that fraction of arbitrary updates on each side. At least
one value always remains: with ``n`` updates at most ``(n - 1) // 2`` are
trimmed from each end.

Examples:
    >>> import numpy as np
    >>> from stamen.transport import ValidUpdate
    >>> values = (1.0, 2.0, 3.0, 4.0, -100.0)
    >>> updates = [ValidUpdate({"w": np.array([v])}, 1, 0, False, None) for v in values]
    >>> trimmed_mean(updates, 0.2)["w"]  # drops -100 and 4
    array([2.])
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport.deltas import stacked
from stamen.transport.reply_validation import ValidUpdate

LOG = logging.getLogger("stamen.strategies")


def trimmed_count(n: int, fraction: float) -> int:
    """How many values to drop from each end of ``n``, leaving at least one."""
    return min(int(np.floor(fraction * n)), (n - 1) // 2)


def trimmed_mean(updates: list[ValidUpdate], fraction: float) -> dict[str, np.ndarray]:
    """The coordinate-wise mean after dropping ``fraction`` of the values at each end."""
    k = trimmed_count(len(updates), fraction)
    result = {}
    for name in updates[0].delta:
        ordered = np.sort(stacked(updates, name), axis=0)
        result[name] = ordered[k : len(updates) - k].mean(axis=0)
    return result


class TrimmedMean(CompressedFedAvg):
    """Compressed FedAvg that aggregates with the coordinate-wise trimmed mean.

    Args:
        trim_fraction: fraction trimmed from each end, in [0, 0.5).
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(self, *, trim_fraction: float = 0.2, **kwargs: Any) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ConfigError(f"trim_fraction must be in [0, 0.5); got {trim_fraction!r}")
        super().__init__(**kwargs)
        self.trim_fraction = trim_fraction

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info("TrimmedMean: trimming %.0f%% from each end", 100 * self.trim_fraction)

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """The coordinate-wise trimmed mean of the accepted deltas."""
        return trimmed_mean(updates, self.trim_fraction)
