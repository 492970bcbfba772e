"""Krum and Multi-Krum: keep the deltas closest to their neighbours, drop the outliers.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017, https://arxiv.org/abs/1703.02757.

With ``n`` deltas of which at most ``f`` are Byzantine, each delta's score is
the sum of squared L2 distances to its ``n - f - 2`` nearest other deltas.
Krum keeps the one delta with the lowest score; Multi-Krum keeps the ``m``
lowest and takes their example-weighted mean (``m = n - f`` when unset). The
guarantee needs ``n > 2f + 2``; with fewer deltas the neighbour count is
clamped to at least one and a warning is logged.

Examples:
    >>> import numpy as np
    >>> from stamen.transport import ValidUpdate
    >>> values = (1.0, 1.1, 0.9, 1.05, 40.0)
    >>> updates = [ValidUpdate({"w": np.array([v])}, 1, 0, False, None) for v in values]
    >>> sorted(int(i) for i in krum_select(updates, byzantine=1, keep=3))  # not 40, not 0.9
    [0, 1, 3]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport.deltas import flat, weighted_mean_delta
from stamen.transport.reply_validation import ValidUpdate

LOG = logging.getLogger("stamen.strategies")


def krum_scores(updates: list[ValidUpdate], byzantine: int) -> np.ndarray:
    """Each delta's sum of squared distances to its ``n - f - 2`` nearest others."""
    n = len(updates)
    if n == 1:
        return np.zeros(1)
    vectors = np.stack([flat(update.delta) for update in updates])
    squared = np.square(vectors).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * vectors @ vectors.T, 0.0)
    neighbours = min(max(1, n - byzantine - 2), n - 1)
    ordered = np.sort(distances, axis=1)[:, 1 : neighbours + 1]  # column 0 is the self-distance
    return ordered.sum(axis=1)


def krum_select(updates: list[ValidUpdate], *, byzantine: int, keep: int) -> np.ndarray:
    """Indices of the ``keep`` deltas with the lowest Krum scores, best first."""
    return np.argsort(krum_scores(updates, byzantine), kind="stable")[: max(1, keep)]


class Krum(CompressedFedAvg):
    """Compressed FedAvg over the deltas Krum (``select=1``) or Multi-Krum selects.

    Args:
        byzantine: ``f``, how many malicious devices a round may hold.
        select: how many deltas to keep: 1 is Krum; 0 means ``n - f`` (Multi-Krum).
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(self, *, byzantine: int = 2, select: int = 1, **kwargs: Any) -> None:
        if byzantine < 0:
            raise ConfigError(f"krum byzantine count must be >= 0; got {byzantine!r}")
        if select < 0:
            raise ConfigError(f"krum select must be >= 0 (0: n - f); got {select!r}")
        super().__init__(**kwargs)
        self.byzantine = byzantine
        self.select = select

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info("Krum: f=%d, keeping %s", self.byzantine, self.select or "n - f")

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """The (weighted) mean of the deltas with the best Krum scores."""
        n = len(updates)
        if n <= 2 * self.byzantine + 2:
            LOG.warning(
                "Krum with f=%d needs more than %d updates; got %d",
                self.byzantine,
                2 * self.byzantine + 2,
                n,
            )
        keep = self.select or max(1, n - self.byzantine)
        chosen = krum_select(updates, byzantine=self.byzantine, keep=keep)
        return weighted_mean_delta([updates[int(i)] for i in chosen])
