"""Small helpers over decoded deltas and models (``{tensor name: array}``) shared by the
strategies."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from stamen.transport.reply_validation import ValidUpdate


def stacked(updates: list[ValidUpdate], name: str) -> np.ndarray:
    """One tensor of every update, stacked along a new first axis, in float64.

    Examples:
        >>> from stamen.transport import ValidUpdate
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
    """Trusted example counts as aggregation weights that sum to one."""
    counts = np.array([update.weight for update in updates], dtype=np.float64)
    return counts / counts.sum()


def weighted_mean_delta(updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
    """The weighted mean of the updates' deltas (``ValidUpdate.weight``), in float64."""
    total = float(sum(update.weight for update in updates))
    mean: dict[str, np.ndarray] = {}
    for name, first in updates[0].delta.items():
        total_delta = np.zeros(first.shape, dtype=np.float64)
        weighted = np.empty_like(total_delta)
        for update in updates:
            np.multiply(update.delta[name], update.weight / total, out=weighted, dtype=np.float64)
            total_delta += weighted
        mean[name] = total_delta
    return mean


def apply_mean_delta(
    base: dict[str, np.ndarray], updates: list[ValidUpdate]
) -> dict[str, np.ndarray]:
    """``base`` plus the example-weighted mean of the updates' deltas."""
    mean = weighted_mean_delta(updates)
    return {name: (value + mean[name]).astype(np.float32) for name, value in base.items()}


def apply_masks_np(
    tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Zero the pruned entries (``mask == False``) of the masked tensors."""
    return {
        name: value * masks[name] if name in masks else value for name, value in tensors.items()
    }


def to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Float32 numpy copies of an ``ArrayRecord``."""
    return {name: arrays[name].numpy().astype(np.float32) for name in arrays}


def to_array_record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap numpy tensors into an ``ArrayRecord``, keeping their order."""
    return ArrayRecord({name: Array(value) for name, value in tensors.items()})
