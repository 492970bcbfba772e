"""Which coordinates a secure-aggregation round sends: a public, seeded random subset.

Secure aggregation can only add vectors whose entries line up, so every device of a
round sends the same coordinates. Top-k cannot be used: each device's top-k is its
own, and revealing it would reveal the update. Instead the round's coordinates are a
random subset drawn from public information (the run's seed and the round), among
the weights the server has not pruned: rand-k sparsification, whose left-out values
error feedback carries to later rounds (Stich, Cordonnier and Jaggi, "Sparsified SGD
with Memory", NeurIPS 2018, https://arxiv.org/abs/1809.07599). The server and every
device compute the same subset, so no index travels.

Examples:
    >>> shapes = {"a": (4, 5), "b": (5,)}
    >>> chosen = round_coordinates(shapes, {}, ratio=0.2, seed=0, round_num=3)
    >>> chosen.size, bool(np.all(np.diff(chosen) > 0))
    (5, True)
    >>> values = {"a": np.ones((4, 5)), "b": np.zeros(5)}
    >>> gather(values, chosen).shape, scatter(np.ones(5), chosen, shapes)["b"].shape
    ((5,), (5,))
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np


def round_coordinates(
    shapes: Mapping[str, tuple[int, ...]],
    masks: Mapping[str, np.ndarray],
    *,
    ratio: float,
    seed: int,
    round_num: int,
) -> np.ndarray:
    """Sorted flat indices (over ``shapes`` in order) of the round's coordinates.

    ``masks`` (the server's pruning masks) exclude pruned weights; ``ratio`` of the
    rest are chosen, at least one.
    """
    eligible = []
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        mask = masks.get(name)
        local = np.arange(size) if mask is None else np.flatnonzero(np.asarray(mask).ravel())
        eligible.append(local + offset)
        offset += size
    pool = np.concatenate(eligible) if eligible else np.zeros(0, np.int64)
    count = max(1, math.ceil(ratio * pool.size)) if pool.size else 0
    digest = hashlib.sha256(f"stamen.secagg.coordinates:{seed}:{round_num}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
    return np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)


def gather(tensors: Mapping[str, np.ndarray], coordinates: np.ndarray) -> np.ndarray:
    """The values of ``tensors`` (flattened in order) at ``coordinates``."""
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in tensors.values()])
    return flat[coordinates]


def scatter(
    values: np.ndarray, coordinates: np.ndarray, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Dense tensors of ``shapes``, zero except ``values`` at ``coordinates``."""
    total = sum(math.prod(shape) for shape in shapes.values())
    flat = np.zeros(total, np.float64)
    flat[coordinates] = values
    result: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        result[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return result
