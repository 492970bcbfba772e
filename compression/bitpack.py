"""Vectorised packing of unsigned integers: fixed-width bits, LEB128 varints, Rice codes.

All formats are canonical, and the unpackers reject anything the packers would
not have produced (non-zero padding bits, overlong varints, trailing bytes). That way a payload
has exactly one valid encoding, and a corrupted one fails loudly instead of
decoding to something plausible. Unpackers raise :class:`stamen.core.errors.InvalidUpdate`.

Bit order is MSB first, as in :func:`numpy.packbits`.
"""

from __future__ import annotations

import math

import numpy as np

from stamen.core.errors import InvalidUpdate

MAX_PACKED_BITS = 32
MAX_VARINT_BYTES = 5
"""Varints carry index gaps below 2**35; element counts are capped far lower."""
MAX_GAP_BITS = 7 * MAX_VARINT_BYTES
"""Rice codes carry the same gaps as varints: below ``2**MAX_GAP_BITS``."""
MAX_RICE_PARAMETER = 30
"""The largest Rice parameter ``k``: how many low bits of each gap are sent as they are."""
_RICE_WINDOW_BYTES = 1 << 15
"""Rice decoding works on windows of this many bytes, so its scratch memory is bounded."""
_SMALL_RICE_BYTES = 256
"""Rice streams up to this size are decoded code by code (``_short_stream_terminators``)."""


_VARINT_LIMITS = np.array([1 << shift for shift in range(7, 7 * MAX_VARINT_BYTES, 7)], np.uint64)
"""A varint needs one more byte at each of these values."""


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
    if 8 % bits == 0:  # whole values per byte (q4, q2): shift them into place
        per_byte = 8 // bits
        padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: flat.size] = flat
        shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
        return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).tobytes()
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
    if 8 % bits == 0:  # whole values per byte (q4, q2)
        shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
        values = ((raw[:, None] >> shifts) & ((1 << bits) - 1)).ravel()
        if values[count:].any():
            raise InvalidUpdate("non-zero padding bits after the packed values")
        return values[:count].astype(np.uint32)
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
    return np.searchsorted(_VARINT_LIMITS, flat, side="right").astype(np.int64) + 1


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


def rice_bit_count(values: np.ndarray, k: int) -> int:
    """Bits that ``values`` take as Rice codes with parameter ``k`` (before byte padding)."""
    flat = np.asarray(values, dtype=np.uint64).ravel()
    return flat.size * (k + 1) + int((flat >> np.uint64(k)).sum())


def best_rice_parameter(values: np.ndarray) -> int:
    """The Rice parameter in ``0..MAX_RICE_PARAMETER`` that codes ``values`` in the fewest bits
    (the smallest such parameter on a tie).

    Past the bit length of the largest value every quotient is zero and each step up only
    adds a bit per value, so only parameters up to that length are compared.

    Examples:
        >>> best_rice_parameter(np.array([30, 35, 28, 40]))
        4
    """
    flat = np.asarray(values, dtype=np.uint64).ravel()
    if flat.size == 0:
        return 0
    longest = min(int(flat.max()).bit_length(), MAX_RICE_PARAMETER)
    ks = np.arange(longest + 1, dtype=np.uint64)
    costs = flat.size * (ks + np.uint64(1)) + (flat[None, :] >> ks[:, None]).sum(axis=1)
    return int(np.argmin(costs))


def encode_rice(values: np.ndarray, k: int) -> bytes:
    """Rice-code non-negative integers below ``2**MAX_GAP_BITS`` with parameter ``k``.

    Each value ``v`` becomes ``v >> k`` one-bits, a zero-bit, then the ``k`` low
    bits of ``v``; the codes are concatenated MSB first and zero-padded to a byte.

    Examples:
        >>> encode_rice(np.array([0, 5, 9]), 2).hex()  # 0|00 10|01 110|01 + padding
        '1390'
    """
    if not 0 <= k <= MAX_RICE_PARAMETER:
        raise ValueError(f"Rice parameter must be in 0..{MAX_RICE_PARAMETER}; got {k}")
    flat = np.asarray(values, dtype=np.uint64).ravel()
    if flat.size and int(flat.max()) >> MAX_GAP_BITS:
        raise ValueError(f"Rice-coded values must be below 2**{MAX_GAP_BITS}")
    quotients = (flat >> np.uint64(k)).astype(np.int64)
    code_ends = np.cumsum(quotients + (k + 1))
    total = int(code_ends[-1]) if flat.size else 0
    terminators = code_ends - (k + 1)
    # Unary runs as a difference array: +1 where a run starts, -1 at its terminating zero.
    steps = np.zeros(total + 1, dtype=np.int8)
    steps[terminators - quotients] = 1
    steps[terminators] -= 1
    bits = np.cumsum(steps[:total], dtype=np.int8).astype(np.uint8)
    for bit in range(k):
        shift = np.uint64(k - 1 - bit)
        bits[terminators + 1 + bit] = ((flat >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def decode_rice(data: bytes, count: int, k: int) -> np.ndarray:
    """Inverse of :func:`encode_rice`: exactly ``count`` values as ``int64``.

    Rejects a parameter outside ``0..MAX_RICE_PARAMETER``, a stream that ends
    inside a code, trailing bytes, non-zero padding bits and values at or above
    ``2**MAX_GAP_BITS``. Time is linear in ``len(data)``; memory is a fixed-size
    window plus a few integers per code.
    """
    if not 0 <= k <= MAX_RICE_PARAMETER:
        raise InvalidUpdate(f"Rice parameter must be in 0..{MAX_RICE_PARAMETER}; got {k}")
    raw = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if raw.size:
            raise InvalidUpdate(f"{raw.size} index bytes for 0 indices")
        return np.zeros(0, dtype=np.int64)
    total_bits = raw.size * 8
    if total_bits < count * (k + 1):
        raise InvalidUpdate(f"{raw.size} bytes cannot hold {count} Rice codes with k={k}")
    if raw.size <= _SMALL_RICE_BYTES:
        terminators, position = _short_stream_terminators(data, count, k)
    else:
        terminators, position = _long_stream_terminators(raw, count, k)
    if raw.size != packed_size(position, 1):
        extra = raw.size - packed_size(position, 1)
        raise InvalidUpdate(f"{extra} trailing byte(s) after the Rice codes")
    if position % 8 and int(raw[-1]) & ((1 << (8 - position % 8)) - 1):
        raise InvalidUpdate("non-zero padding bits after the Rice codes")
    starts = np.concatenate(([0], terminators[:-1] + (k + 1)))
    quotients = terminators - starts
    if int(quotients.max()) >> (MAX_GAP_BITS - k):
        raise InvalidUpdate(f"a Rice-coded value is not below 2**{MAX_GAP_BITS}")
    return (quotients << k) | _bits_at(raw, terminators + 1, k)


def _short_stream_terminators(data: bytes, count: int, k: int) -> tuple[np.ndarray, int]:
    """The terminating zero-bits of ``count`` codes, found one after another.

    Most top-k streams are a few dozen bytes (biases, small layers), where the vectorised
    search costs its fixed overhead many times over: ``str.find`` on the stream's bits
    follows the chain in a few microseconds. Returns the terminators and the bit where
    the last code ends.
    """
    total_bits = len(data) * 8
    bits = format(int.from_bytes(data, "big"), f"0{total_bits}b")
    step = k + 1
    terminators = []
    position = 0
    for found in range(count):
        end = bits.find("0", position)
        if end < 0:
            raise InvalidUpdate(f"Rice stream ends after {found} of {count} codes")
        terminators.append(end)
        position = end + step
        if position > total_bits:
            raise InvalidUpdate(f"Rice stream ends inside the remainder of code {found + 1}")
    return np.array(terminators, dtype=np.int64), position


def _long_stream_terminators(raw: np.ndarray, count: int, k: int) -> tuple[np.ndarray, int]:
    """:func:`_short_stream_terminators` by vectorised windows of bits, for long streams."""
    total_bits = raw.size * 8
    terminators = np.empty(count, dtype=np.int64)
    found = 0
    position = 0  # no terminator lies before this bit
    while found < count:
        if position >= total_bits:
            raise InvalidUpdate(f"Rice stream ends after {found} of {count} codes")
        chain, window_end = _window_terminators(raw, position, k, count - found)
        if chain.size == 0:  # a unary run longer than the window
            position = window_end
            continue
        terminators[found : found + chain.size] = chain
        found += chain.size
        position = int(chain[-1]) + k + 1
        if position > total_bits:
            raise InvalidUpdate(f"Rice stream ends inside the remainder of code {found}")
    return terminators, position


def _window_terminators(
    raw: np.ndarray, position: int, k: int, limit: int
) -> tuple[np.ndarray, int]:
    """Terminating zero-bits of up to ``limit`` consecutive codes, within one window.

    The first is the first zero at or after bit ``position``; each next one is the
    first zero after the previous code's remainder. Remainder bits may be zeros
    too, so which zeros terminate depends on the codes before: the chain is
    followed with :func:`_follow`. Stops where the next terminator would lie past
    the window. Returns absolute bit positions and the bit where the window ends.
    """
    first_byte = position // 8
    window = np.unpackbits(raw[first_byte : first_byte + _RICE_WINDOW_BYTES])
    base = first_byte * 8
    is_zero = window == 0
    is_zero[: position - base] = False
    # zeros_before[p] is the number of the first zero at or after p (window-relative).
    zeros_before = np.zeros(window.size + 1, dtype=np.int32)
    np.cumsum(is_zero, out=zeros_before[1:])
    zeros = np.flatnonzero(is_zero).astype(np.int32)
    if zeros.size == 0:
        return np.zeros(0, dtype=np.int64), base + window.size
    # Past the window (or past the last zero) the successor is the end marker zeros.size.
    successor = zeros_before[np.minimum(zeros + (k + 1), window.size)]
    successor = np.append(successor, np.int32(zeros.size))
    # Terminators are k + 1 bits apart or more, which bounds the chain's length.
    longest = min(limit, (window.size - 1 - int(zeros[0])) // (k + 1) + 1)
    chain = _follow(successor, longest)
    chain = chain[: int(np.searchsorted(chain, zeros.size))]
    return zeros[chain].astype(np.int64) + base, base + window.size


def _follow(successor: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` nodes of the chain ``0, successor[0], successor[successor[0]], ...``.

    ``successor`` increases along the chain and its last entry is a fixed point
    (the end). Jumps of one block of steps, built by squaring, leave a Python loop
    of only ``count / block`` steps; each block is then filled with vectorised
    single steps. A block of about ``sqrt(count)`` steps balances the two loops.
    Work is linear in ``successor.size + count``.
    """
    block = max(2, 1 << (math.isqrt(count) - 1).bit_length()) if count > 1 else 2
    blocks = -(-count // block)
    block_starts = np.zeros(blocks, dtype=successor.dtype)
    if blocks > 1:
        jump = successor
        for _ in range(block.bit_length() - 1):
            jump = jump[jump]
        node = 0
        for index in range(1, blocks):
            node = int(jump[node])
            block_starts[index] = node
    chain = np.empty((block, blocks), dtype=successor.dtype)
    chain[0] = block_starts
    for step in range(1, min(count, block)):
        chain[step] = successor[chain[step - 1]]
    return chain.T.ravel()[:count]


def _bits_at(raw: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-bit (at most 32) MSB-first integers starting at bit ``starts``."""
    if width == 0:
        return np.zeros(starts.size, dtype=np.int64)
    # width + 7 offset bits fit in 5 bytes; zero bytes past the end keep gathers in bounds.
    padded = np.concatenate((raw, np.zeros(5, dtype=np.uint8)))
    first = starts // 8
    word = np.zeros(starts.size, dtype=np.int64)
    for byte in range(5):
        word = (word << 8) | padded[first + byte]
    return (word >> (40 - starts % 8 - width)) & ((1 << width) - 1)
