"""Krum and Multi-Krum: keep the deltas closest to their neighbours, drop the outliers.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017, https://arxiv.org/abs/1703.02757.

With ``n`` deltas of which at most ``f`` are Byzantine, each delta's score is
the sum of squared L2 distances to its ``n - f - 2`` nearest other deltas.
Krum keeps the one delta with the lowest score; Multi-Krum keeps the ``m``
lowest and takes their example-weighted mean (``m = n - f`` when unset). The
guarantee needs ``n > 2f + 2``; with fewer deltas the neighbour count is
clamped to at least one and a warning is logged.

Unless ``f`` is given, it follows from the round: ``ceil(attacker_fraction * n)``,
at most ``(n - 3) // 2`` so that the guarantee's condition holds. A fixed count
is right for one round size only; the fraction holds as rounds grow or shrink
(over-selection, dropouts, an operator changing devices per round).

Examples:
    >>> import numpy as np
    >>> from stamen.transport import ValidUpdate
    >>> values = (1.0, 1.1, 0.9, 1.05, 40.0)
    >>> updates = [ValidUpdate({"w": np.array([v])}, 1, 0, False, None) for v in values]
    >>> sorted(int(i) for i in krum_select(updates, byzantine=1, keep=3))  # not 40, not 0.9
    [0, 1, 3]
    >>> assumed_attackers(20, 0.3), assumed_attackers(5, 0.3)
    (6, 1)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport.deltas import flat, weighted_mean_delta
from stamen.transport.reply_validation import ValidUpdate

LOG = logging.getLogger("stamen.strategies")


def assumed_attackers(n: int, fraction: float) -> int:
    """``f`` for a round of ``n`` deltas: ``ceil(fraction * n)``, at most ``(n - 3) // 2``."""
    return max(0, min(math.ceil(fraction * n - 1e-9), (n - 3) // 2))


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
        byzantine: ``f``, how many malicious devices a round may hold; ``None``
            derives it from ``attacker_fraction`` and each round's size.
        select: how many deltas to keep: 1 is Krum; 0 means ``n - f`` (Multi-Krum).
        attacker_fraction: the share of a round assumed malicious, when ``byzantine`` is unset.
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(
        self,
        *,
        byzantine: int | None = None,
        select: int = 1,
        attacker_fraction: float = 0.3,
        **kwargs: Any,
    ) -> None:
        if byzantine is not None and byzantine < 0:
            raise ConfigError(f"krum byzantine count must be >= 0; got {byzantine!r}")
        if not 0 <= attacker_fraction < 0.5:
            raise ConfigError(f"attacker_fraction must be in [0, 0.5); got {attacker_fraction!r}")
        if select < 0:
            raise ConfigError(f"krum select must be >= 0 (0: n - f); got {select!r}")
        super().__init__(**kwargs)
        self.byzantine = byzantine
        self.select = select
        self.attacker_fraction = attacker_fraction

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        f = self.byzantine if self.byzantine is not None else f"{self.attacker_fraction:.0%} of n"
        LOG.info("Krum: f=%s, keeping %s", f, self.select or "n - f")

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """The (weighted) mean of the deltas with the best Krum scores."""
        n = len(updates)
        byzantine = self.byzantine
        if byzantine is None:
            byzantine = assumed_attackers(n, self.attacker_fraction)
        elif n <= 2 * byzantine + 2:
            LOG.warning(
                "Krum with f=%d needs more than %d updates; got %d", byzantine, 2 * byzantine + 2, n
            )
        keep = self.select or max(1, n - byzantine)
        chosen = krum_select(updates, byzantine=byzantine, keep=keep)
        return weighted_mean_delta([updates[int(i)] for i in chosen])
