"""Vectorised packing of unsigned integers: fixed-width bit packing and LEB128 varints.

Both formats are canonical, and the unpackers reject anything the packers would
not have produced (non-zero padding bits, overlong varints). That way a payload
has exactly one valid encoding, and a corrupted one fails loudly instead of
decoding to something plausible. Unpackers raise :class:`stamen.errors.InvalidUpdate`.

Bit order is MSB first, as in :func:`numpy.packbits`.
"""

from __future__ import annotations

import numpy as np

from stamen.errors import InvalidUpdate

MAX_PACKED_BITS = 32
MAX_VARINT_BYTES = 5
"""Varints carry index gaps below 2**35; element counts are capped far lower."""


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values take when bit-packed at ``bits`` bits each."""
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers below ``2**bits`` at ``bits`` bits each, MSB first.

    Examples:
        >>> pack_bits(np.array([1, 2, 3]), 2).hex()
        '6c'
    """
    if not 1 <= bits <= MAX_PACKED_BITS:
        raise ValueError(f"bits must be in 1..{MAX_PACKED_BITS}; got {bits}")
    flat = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if flat.size and int(flat.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    # Spread each value over its 32 big-endian bits and keep the low `bits` columns.
    as_bytes = flat.astype(">u4").view(np.uint8).reshape(-1, 4)
    bit_matrix = np.unpackbits(as_bytes, axis=1)[:, MAX_PACKED_BITS - bits :]
    return np.packbits(bit_matrix.ravel()).tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values as ``uint32``.

    The length must be exactly ``packed_size(count, bits)`` and the padding bits zero.
    """
    if not 1 <= bits <= MAX_PACKED_BITS:
        raise InvalidUpdate(f"bit width must be in 1..{MAX_PACKED_BITS}; got {bits}")
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise InvalidUpdate(
            f"{len(data)} packed bytes for {count} values at {bits} bits, expected {expected}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.uint32)
    all_bits = np.unpackbits(raw)
    used = count * bits
    if all_bits[used:].any():
        raise InvalidUpdate("non-zero padding bits after the packed values")
    bit_matrix = np.zeros((count, MAX_PACKED_BITS), dtype=np.uint8)
    bit_matrix[:, MAX_PACKED_BITS - bits :] = all_bits[:used].reshape(count, bits)
    return np.packbits(bit_matrix, axis=1).view(">u4").ravel().astype(np.uint32)


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each value takes as a LEB128 varint (values below ``2**35``)."""
    flat = np.asarray(values, dtype=np.uint64).ravel()
    sizes = np.ones(flat.shape, dtype=np.int64)
    for shift in range(7, 7 * MAX_VARINT_BYTES, 7):
        sizes += flat >= np.uint64(1 << shift)
    return sizes


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128-encode non-negative integers below ``2**35``.

    Examples:
        >>> encode_varints(np.array([1, 300])).hex()
        '01ac02'
    """
    flat = np.asarray(values, dtype=np.uint64).ravel()
    if flat.size and int(flat.max()) >> (7 * MAX_VARINT_BYTES):
        raise ValueError(f"varint values must be below 2**{7 * MAX_VARINT_BYTES}")
    sizes = varint_sizes(flat)
    starts = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    for byte_num in range(MAX_VARINT_BYTES):
        has_byte = sizes > byte_num
        if not has_byte.any():
            break
        group = (flat[has_byte] >> np.uint64(7 * byte_num)) & np.uint64(0x7F)
        continues = (sizes[has_byte] > byte_num + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has_byte] + byte_num] = (group | continues).astype(np.uint8)
    return out.tobytes()


def decode_varints(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`encode_varints`: exactly ``count`` values as ``int64``.

    Rejects a wrong count, a truncated last varint, varints longer than
    ``MAX_VARINT_BYTES`` and overlong (non-canonical) encodings.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != count:
        raise InvalidUpdate(f"{ends.size} varints in {raw.size} bytes, expected {count}")
    if count == 0:
        if raw.size:
            raise InvalidUpdate(f"{raw.size} index bytes for 0 indices")
        return np.zeros(0, dtype=np.int64)
    if ends[-1] != raw.size - 1:
        raise InvalidUpdate("index bytes end inside a varint")
    starts = np.concatenate(([0], ends[:-1] + 1))
    sizes = ends - starts + 1
    if int(sizes.max()) > MAX_VARINT_BYTES:
        raise InvalidUpdate(f"varint longer than {MAX_VARINT_BYTES} bytes")
    if np.any((sizes > 1) & (raw[ends] == 0)):
        raise InvalidUpdate("overlong varint encoding")
    values = np.zeros(count, dtype=np.int64)
    for byte_num in range(int(sizes.max())):
        has_byte = sizes > byte_num
        group = raw[starts[has_byte] + byte_num].astype(np.int64) & 0x7F
        values[has_byte] |= group << (7 * byte_num)
    return values
