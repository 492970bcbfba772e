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


def flat_size(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Coordinates of ``shapes`` flattened in order."""
    return sum(math.prod(shape) for shape in shapes.values())


def eligible_mask(
    shapes: Mapping[str, tuple[int, ...]], masks: Mapping[str, np.ndarray]
) -> np.ndarray:
    """A flat boolean mask of the unpruned coordinates."""
    parts = [
        np.ones(math.prod(shape), bool)
        if (mask := masks.get(name)) is None
        else np.asarray(mask, bool).ravel()
        for name, shape in shapes.items()
    ]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def announced_coordinates(
    importance: np.ndarray,
    eligible: np.ndarray,
    *,
    ratio: float,
    seed: int,
    round_num: int,
    exploit: float = 0.5,
) -> np.ndarray:
    """The round's coordinates chosen by the server from public information: ``exploit`` of
    them where the global model moved most lately (``importance``, a decayed sum of the
    applied updates' magnitudes), the rest a seeded random draw from the other unpruned
    coordinates, so that every coordinate keeps its chance. Sorted flat indices."""
    pool = np.flatnonzero(eligible)
    count = max(1, math.ceil(ratio * pool.size)) if pool.size else 0
    scores = importance[pool]
    top_count = min(int(exploit * count), int(np.count_nonzero(scores)))
    top = pool[np.argsort(-scores, kind="stable")[:top_count]] if top_count else pool[:0]
    rest = np.setdiff1d(pool, top, assume_unique=True)
    digest = hashlib.sha256(f"stamen.secagg.explore:{seed}:{round_num}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
    explore = rng.choice(rest, size=count - top_count, replace=False)
    return np.sort(np.concatenate([top, explore])).astype(np.int64)


def coordinates_to_bitmap(coordinates: np.ndarray, total: int) -> bytes:
    """A bitmap of ``total`` bits, set at ``coordinates`` (MSB first, zero padding)."""
    bits = np.zeros(total, np.uint8)
    bits[coordinates] = 1
    return np.packbits(bits).tobytes()


def coordinates_from_bitmap(data: bytes, total: int, eligible: np.ndarray) -> np.ndarray:
    """Inverse of :func:`coordinates_to_bitmap`; ``ValueError`` on a wrong size, set padding,
    or a set bit outside ``eligible`` (a pruned weight)."""
    if len(data) != (total + 7) // 8:
        raise ValueError(f"a coordinate bitmap of {total} bits is {(total + 7) // 8} bytes")
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if bits[total:].any():
        raise ValueError("non-zero padding in the coordinate bitmap")
    chosen = np.flatnonzero(bits[:total])
    if chosen.size == 0 or not eligible[chosen].all():
        raise ValueError("the coordinate bitmap is empty or names pruned weights")
    return chosen.astype(np.int64)


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
