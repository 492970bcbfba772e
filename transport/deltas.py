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
    """Trusted example counts (``ValidUpdate.weight``) as aggregation weights that sum to one.

    Where every update counts for nothing (a robust rule kept only distrusted ones),
    the example counts decide, then equal shares: a round never divides by zero.

    Examples:
        >>> zero = ValidUpdate({"w": np.zeros(1)}, 10, 0, False, None, trust=0.0)
        >>> weights_of([zero, zero]).tolist()
        [0.5, 0.5]
    """
    for weights in (
        [update.weight for update in updates],
        [float(update.num_examples) for update in updates],
    ):
        total = float(sum(weights))
        if total > 0:
            return np.asarray(weights, dtype=np.float64) / total
    return np.full(len(updates), 1.0 / len(updates))


def weighted_mean_delta(updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
    """The weighted mean (:func:`weights_of`) of the updates' deltas, in float64."""
    weights = weights_of(updates)
    mean: dict[str, np.ndarray] = {}
    for name, first in updates[0].delta.items():
        total_delta = np.zeros(first.shape, dtype=np.float64)
        weighted = np.empty_like(total_delta)
        for update, weight in zip(updates, weights, strict=True):
            np.multiply(update.delta[name], weight, out=weighted, dtype=np.float64)
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


VARIANCE_SUFFIX = "running_var"
"""The state-dict name ending of a BatchNorm's running variance (torch's naming)."""
VARIANCE_EPS = 1e-5
"""Added to a variance before its logarithm: BatchNorm's own default ``eps``, below which a
variance makes no difference to its layer's output."""
MAX_LOG_STEP = 20.0
"""A variance moves by at most ``e**20`` either way in one round, so no aggregate (a hostile
one that the bounds let through included) overflows float32 and voids the round."""


def model_delta(
    trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """What a device sends for ``trained`` against ``base``: the difference of every tensor,
    but the log-ratio of every BatchNorm running variance.

    Variances change by factors, not by amounts, and must stay positive. As a difference,
    a compressed change (one sign and one scale for a whole tensor) overshoots the small
    variances and pins them at 0, where BatchNorm divides by ``sqrt(eps)``: MobileNet's
    central loss then spiked to hundreds or thousands while its devices trained normally.
    As a log-ratio, any code, mean or noise moves a variance by a positive factor
    (:func:`next_model`).

    Examples:
        >>> delta = model_delta({"bn.running_var": np.array([2.0]), "w": np.array([2.0])},
        ...                     {"bn.running_var": np.array([1.0]), "w": np.array([1.0])})
        >>> float(delta["w"][0]), round(float(delta["bn.running_var"][0]), 4)
        (1.0, 0.6931)
    """
    return {
        name: _log(trained[name]) - _log(value)
        if name.endswith(VARIANCE_SUFFIX)
        else trained[name] - value
        for name, value in base.items()
    }


def next_model(
    base: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    stepped: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``stepped`` (a strategy's step from ``base`` by the aggregated ``delta``), with every
    BatchNorm running variance moved by the factor its aggregated log-ratio says
    (:func:`model_delta`): a geometric mean of the devices' variances under FedAvg.

    Examples:
        >>> base = {"bn.running_var": np.array([1.0, 4.0], np.float32)}
        >>> delta = {"bn.running_var": np.array([np.log(2.0), -50.0])}
        >>> next_model(base, delta, base)["bn.running_var"].round(4).tolist()
        [2.0, 0.0]
    """
    model = dict(stepped)
    for name, value in base.items():
        if name.endswith(VARIANCE_SUFFIX):
            step = np.clip(delta[name], -MAX_LOG_STEP, MAX_LOG_STEP)
            moved = (value.astype(np.float64) + VARIANCE_EPS) * np.exp(step) - VARIANCE_EPS
            model[name] = np.maximum(moved, 0.0).astype(np.float32)
    return model


def _log(variance: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(variance.astype(np.float64), 0.0) + VARIANCE_EPS).astype(np.float32)


def to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Float32 numpy copies of an ``ArrayRecord``."""
    return {name: arrays[name].numpy().astype(np.float32) for name in arrays}


def to_array_record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap numpy tensors into an ``ArrayRecord``, keeping their order."""
    return ArrayRecord({name: Array(value) for name, value in tensors.items()})
