"""One bit per value after a random rotation: DRIVE's quantizer.

Vargaftik et al., "DRIVE: One-bit Distributed Mean Estimation", NeurIPS 2021,
https://arxiv.org/abs/2105.08339 (and EDEN, ICML 2022, https://arxiv.org/abs/2108.08842).

A vector ``x`` of length ``d`` (a power of two) is rotated, ``y = H S x / sqrt(d)`` with
``H`` the Sylvester-Hadamard matrix and ``S`` a diagonal of random signs, and sent as the
signs of ``y`` and one scale, ``||x||^2 / ||y||_1``. The receiver rebuilds
``S H (scale * sign(y)) / sqrt(d)``. The rotation spreads every coordinate over all the
others, so the error no longer depends on how the values are distributed, and that scale
makes the estimate unbiased over the rotation (DRIVE's Theorem 3). A length that is not a
power of two is cut into the powers of two of its binary representation, each rotated
with its own signs and scale, so nothing is padded.

The signs come from SHAKE-128 of a seed and the segment's number, so any receiver rebuilds
them from the seed the message carries; nothing depends on a library's random generator.

Examples:
    >>> x = np.array([3.0, -1.0, 0.5, 2.0, 0.0, 1.0], dtype=np.float32)
    >>> scales, signs = rotate_and_sign(x, seed=7)
    >>> [len(s) for s in segments(6)], scales.shape, signs.shape
    ([4, 2], (2,), (6,))
    >>> estimate = unrotate(scales, signs, seed=7)
    >>> estimate.shape, bool(np.linalg.norm(estimate - x) < np.linalg.norm(x))
    ((6,), True)
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np


def segments(count: int) -> list[range]:
    """The segments of ``count`` values: the powers of two of its binary form, largest first."""
    out = []
    start = 0
    for bit in range(count.bit_length() - 1, -1, -1):
        if count >> bit & 1:
            out.append(range(start, start + (1 << bit)))
            start += 1 << bit
    return out


def random_signs(seed: int, segment: int, length: int) -> np.ndarray:
    """``length`` random signs (float64 ±1) for ``segment`` of a message with ``seed``."""
    digest = hashlib.shake_128(struct.pack("<QI", seed, segment)).digest((length + 7) // 8)
    bits = np.unpackbits(np.frombuffer(digest, dtype=np.uint8))[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def hadamard(x: np.ndarray) -> np.ndarray:
    """``H x`` for the unnormalised Sylvester-Hadamard matrix, in float64 (fast transform).

    Examples:
        >>> hadamard(np.array([1.0, 0.0, 0.0, 0.0])).tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> hadamard(hadamard(np.array([1.0, 2.0]))).tolist()  # H H = d I
        [2.0, 4.0]
    """
    size = x.size
    y = np.asarray(x, dtype=np.float64).copy()
    half = 1
    while half < size:
        blocks = y.reshape(-1, 2, half)
        y = np.stack((blocks[:, 0] + blocks[:, 1], blocks[:, 0] - blocks[:, 1]), axis=1)
        half *= 2
    return y.reshape(size)


def rotate_and_sign(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 scale of each segment and the sign bits (uint8, 1: >= 0) of every value."""
    values = np.asarray(x, dtype=np.float64).ravel()
    parts = segments(values.size)
    scales = np.zeros(len(parts), dtype=np.float32)
    signs = np.zeros(values.size, dtype=np.uint8)
    for number, part in enumerate(parts):
        piece = values[part.start : part.stop]
        rotated = hadamard(random_signs(seed, number, piece.size) * piece) / np.sqrt(piece.size)
        l1 = float(np.abs(rotated).sum())
        scales[number] = float(np.dot(piece, piece)) / l1 if l1 > 0 else 0.0
        signs[part.start : part.stop] = rotated >= 0
    return scales, signs


def unrotate(scales: np.ndarray, signs: np.ndarray, seed: int) -> np.ndarray:
    """The float32 values a receiver rebuilds from :func:`rotate_and_sign`'s output."""
    out = np.zeros(signs.size, dtype=np.float64)
    for number, part in enumerate(segments(signs.size)):
        length = part.stop - part.start
        bits = signs[part.start : part.stop].astype(np.float64)
        rotated = float(scales[number]) * (2.0 * bits - 1.0)
        out[part.start : part.stop] = (
            random_signs(seed, number, length) * hadamard(rotated) / np.sqrt(length)
        )
    return out.astype(np.float32)
