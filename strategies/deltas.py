"""Small helpers over decoded deltas (``{tensor name: array}``) shared by the strategies."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from stamen.strategies.reply_validation import ValidUpdate

Delta = dict[str, np.ndarray]


def stacked(updates: list[ValidUpdate], name: str) -> np.ndarray:
    """One tensor of every update, stacked along a new first axis, in float64.

    Examples:
        >>> from stamen.strategies import ValidUpdate
        >>> u = [ValidUpdate({"w": np.ones(3)}, 1, 0, False, None) for _ in range(2)]
        >>> stacked(u, "w").shape
        (2, 3)
    """
    return np.stack([update.delta[name].astype(np.float64) for update in updates])


def flat(delta: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every tensor of a delta concatenated into one float64 vector, in name order."""
    return np.concatenate([np.ravel(delta[name]).astype(np.float64) for name in sorted(delta)])


def l2_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of a whole delta.

    Examples:
        >>> l2_norm({"a": np.array([3.0]), "b": np.array([4.0])})
        5.0
    """
    return math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in delta.values()))


def weights_of(updates: list[ValidUpdate]) -> np.ndarray:
    """Example counts as aggregation weights that sum to one."""
    counts = np.array([update.num_examples for update in updates], dtype=np.float64)
    return counts / counts.sum()
