"""Signed integer levels on the wire: zigzag codes, bit-packed up to 8 bits, byte planes at
16 and 24 (the ``SignedLevels`` values of :mod:`stamen.compression.codec_stages`)."""

from __future__ import annotations

import numpy as np

from stamen.compression.bitpack import pack_bits, unpack_bits


def zigzag(levels: np.ndarray) -> np.ndarray:
    """Signed integers as unsigned codes, small magnitudes first: 0, -1, 1, -2 -> 0, 1, 2, 3.

    Examples:
        >>> zigzag(np.array([0, -1, 1, -2, 2])).tolist()
        [0, 1, 2, 3, 4]
        >>> unzigzag(zigzag(np.array([-7, 5]))).tolist()
        [-7, 5]
    """
    signed = np.asarray(levels, dtype=np.int64)
    return np.where(signed >= 0, 2 * signed, -2 * signed - 1).astype(np.uint64)


def unzigzag(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`, as int64."""
    unsigned = np.asarray(codes, dtype=np.int64)
    return np.where(unsigned % 2 == 0, unsigned // 2, -(unsigned + 1) // 2)


def pack_levels(codes: np.ndarray, bits: int) -> bytes:
    """Zigzag codes at ``bits``: bit-packed up to 8 bits, byte planes at 16 and 24.

    Examples:
        >>> pack_levels(np.array([1, 258]), 16).hex()  # high bytes, then low bytes
        '00010102'
    """
    if bits <= 8:
        return pack_bits(codes, bits)
    planes = np.asarray(codes, dtype=">u4").view(np.uint8).reshape(-1, 4)[:, 4 - bits // 8 :]
    return planes.T.tobytes()


def unpack_levels(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_levels` (the length is checked by the caller's layout)."""
    if bits <= 8:
        return unpack_bits(data, count, bits)
    width = bits // 8
    planes = np.frombuffer(data, dtype=np.uint8).reshape(width, count).astype(np.uint32)
    codes = np.zeros(count, dtype=np.uint32)
    for plane in planes:
        codes <<= np.uint32(8)
        codes |= plane
    return codes
