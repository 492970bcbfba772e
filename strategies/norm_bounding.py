"""Norm-bounded averaging: clip every decoded delta to an L2 bound, then average.

Sun et al., "Can You Really Backdoor Federated Learning?", 2019,
https://arxiv.org/abs/1911.07963.

A scaled-up malicious update (model replacement, a sign flip times ten) gets
at most the influence of an honest one of the bound's size. With
``clip_norm=None`` the bound is the median norm of the round's accepted
deltas, so it adapts to the training phase without tuning, and a minority of
devices cannot raise it.

Examples:
    >>> import numpy as np
    >>> from stamen.transport import ValidUpdate
    >>> updates = [ValidUpdate({"w": np.array([v])}, 1, 0, False, None) for v in (1.0, 1.0, -50.0)]
    >>> norm_bounded_mean(updates, 1.0)["w"]  # -50 is clipped to -1
    array([0.33333333])
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from stamen.core.errors import ConfigError
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport.deltas import l2_norm, weights_of
from stamen.transport.reply_validation import ValidUpdate

LOG = logging.getLogger("stamen.strategies")


def norm_bounded_mean(updates: list[ValidUpdate], bound: float) -> dict[str, np.ndarray]:
    """The example-weighted mean of the deltas, each first scaled down to norm <= ``bound``."""
    weights = weights_of(updates)
    scales = [min(1.0, bound / norm) if norm > 0 else 1.0 for norm in map(_norm, updates)]
    return {
        name: sum(
            w * s * u.delta[name].astype(np.float64)
            for w, s, u in zip(weights, scales, updates, strict=True)
        )
        for name in updates[0].delta
    }


def _norm(update: ValidUpdate) -> float:
    return l2_norm(update.delta)


class NormBoundedAvg(CompressedFedAvg):
    """Compressed FedAvg over deltas clipped to an L2 norm bound.

    Args:
        clip_norm: the bound; ``None`` uses the median norm of each round's deltas.
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(self, *, clip_norm: float | None = None, **kwargs: Any) -> None:
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError(f"clip_norm must be > 0 (or unset for adaptive); got {clip_norm!r}")
        super().__init__(**kwargs)
        self.clip_norm = clip_norm
        self.last_bound: float | None = None

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info("NormBoundedAvg: bound %s", self.clip_norm or "median norm of each round")

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """Clip each accepted delta to the bound, then take the weighted mean."""
        bound = self.clip_norm
        if bound is None:
            bound = float(np.median([_norm(update) for update in updates])) or 1.0
        self.last_bound = bound
        return norm_bounded_mean(updates, bound)
