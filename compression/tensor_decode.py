"""Decode one ``CompressedTensor`` from an untrusted sender.

Every field is checked against the others before anything is allocated: enum
values, the element count (capped), the packed sizes it implies, the checksum,
then a zlib inflate bounded by the exact expected size. Only then are indices
and values unpacked and checked (in range, strictly increasing, finite).
The one exception raised on bad input is :class:`stamen.core.errors.InvalidUpdate`,
with a one-line message that names the tensor.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from stamen.compression.bitpack import (
    MAX_RICE_PARAMETER,
    MAX_VARINT_BYTES,
    decode_rice,
    decode_varints,
    packed_size,
    unpack_bits,
)
from stamen.compression.hadamard import segments, unrotate
from stamen.compression.levels import unpack_levels, unzigzag
from stamen.core.errors import InvalidUpdate, ShapeMismatch
from stamen.protos.update.v1 import update_pb2 as pb

MAX_ELEMENTS = 2**28
"""Largest element count accepted when the receiver does not know the shape."""
MAX_NDIM = 32

_DTYPES = frozenset({pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16, pb.DTYPE_FLOAT64})
_SPARSITIES = frozenset(
    {pb.SPARSITY_ENCODING_DENSE, pb.SPARSITY_ENCODING_INDICES, pb.SPARSITY_ENCODING_BITMASK}
)
_INDEX_ENCODINGS = frozenset(
    {
        pb.INDEX_ENCODING_NONE,
        pb.INDEX_ENCODING_VARINT_GAPS,
        pb.INDEX_ENCODING_BITPACKED,
        pb.INDEX_ENCODING_RICE_GAPS,
    }
)
_LOSSLESS = frozenset({pb.LOSSLESS_NONE, pb.LOSSLESS_ZLIB})
LEVEL_BITS = (1, 2, 4, 8, 16, 24)
"""Widths of zigzag-coded signed levels: whole symbols per byte or whole bytes per symbol.
At 24 bits every level is below 2**24 in magnitude, so exact in float32."""
_VALUE_BITS: dict[int, tuple[int, ...]] = {
    pb.VALUE_ENCODING_FP32: (32,),
    pb.VALUE_ENCODING_FP16: (16,),
    pb.VALUE_ENCODING_UNIFORM: (2, 4, 8),
    pb.VALUE_ENCODING_INT8_SYMMETRIC: (8,),
    pb.VALUE_ENCODING_SIGN: (1,),
    pb.VALUE_ENCODING_HADAMARD_SIGN: (1,),
    pb.VALUE_ENCODING_SIGNED_LEVELS: LEVEL_BITS,
}
_SCALE_IN_VALUES = frozenset({pb.VALUE_ENCODING_HADAMARD_SIGN})
"""Encodings whose scales travel in ``values`` (one per segment); ``scale`` must be 0."""


def is_power_of_two(value: float) -> bool:
    """Whether ``value`` is a positive power of two (``2**e`` for an integer ``e``).

    Examples:
        >>> is_power_of_two(0.25), is_power_of_two(0.3), is_power_of_two(0.0)
        (True, False, False)
    """
    return math.isfinite(value) and value > 0 and math.frexp(value)[0] == 0.5


def values_size(encoding: int, count: int, bits: int) -> int:
    """Bytes the packed values of ``count`` values take, before the lossless stage."""
    if encoding == pb.VALUE_ENCODING_HADAMARD_SIGN:
        return 4 * len(segments(count)) + packed_size(count, 1)
    return packed_size(count, bits)


def decode_signs(data: bytes, count: int, scale: float) -> np.ndarray:
    """``+scale`` where a packed bit is 1, ``-scale`` where it is 0 (``Sign`` values)."""
    signs = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if signs[count:].any():
        raise InvalidUpdate("non-zero padding bits after the packed signs")
    magnitude = np.float32(scale)
    return np.where(signs[:count] == 1, magnitude, -magnitude).astype(np.float32)


def index_bits_for(size: int) -> int:
    """Bit width of a bit-packed index into ``size`` elements."""
    return max(1, (size - 1).bit_length())


@dataclass(frozen=True)
class TensorLayout:
    """What the header fields of a tensor imply, checked for consistency."""

    shape: tuple[int, ...]
    size: int
    indices_size: int
    values_size: int


def checked_shape(
    message: pb.CompressedTensor, expected: tuple[int, ...] | None, max_elements: int
) -> tuple[tuple[int, ...], int]:
    """The tensor's shape and element count, or ``InvalidUpdate`` if not acceptable.

    Without an expected shape the element count is capped at ``max_elements``.
    """
    if len(message.shape) > MAX_NDIM:
        raise InvalidUpdate(
            f"{_label(message)}: {len(message.shape)} dimensions, at most {MAX_NDIM}"
        )
    shape = tuple(int(d) for d in message.shape)
    if expected is not None:
        # The receiver's own model fixes the shape, so no cap is needed beyond equality.
        if shape != tuple(expected):
            raise ShapeMismatch(_name(message), tuple(expected), shape)
        return shape, math.prod(shape)
    size = 1
    for dim in shape:
        size *= dim
        if size > max_elements:
            raise InvalidUpdate(f"{_label(message)}: shape {shape} exceeds {max_elements} elements")
    return shape, size


def check_layout(
    message: pb.CompressedTensor,
    expected_shape: tuple[int, ...] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> TensorLayout:
    """Validate the header of ``message`` without touching its byte fields."""
    for field, allowed in (
        ("dtype", _DTYPES),
        ("value_encoding", _VALUE_BITS.keys()),
        ("sparsity", _SPARSITIES),
        ("index_encoding", _INDEX_ENCODINGS),
        ("lossless", _LOSSLESS),
    ):
        value = getattr(message, field)
        if value not in allowed:
            raise InvalidUpdate(f"{_label(message)}: unknown or unspecified {field} {value}")
    shape, size = checked_shape(message, expected_shape, max_elements)

    bits, count = message.bits, message.num_values
    if bits not in _VALUE_BITS[message.value_encoding]:
        allowed_bits = ", ".join(map(str, _VALUE_BITS[message.value_encoding]))
        encoding = pb.ValueEncoding.Name(message.value_encoding)
        raise InvalidUpdate(
            f"{_label(message)}: bits must be one of {allowed_bits} for {encoding}; got {bits}"
        )
    if not (math.isfinite(message.scale) and math.isfinite(message.zero_point)):
        raise InvalidUpdate(f"{_label(message)}: scale and zero point must be finite")
    if message.scale < 0:
        raise InvalidUpdate(f"{_label(message)}: negative scale {message.scale}")
    if message.value_encoding != pb.VALUE_ENCODING_UNIFORM and message.zero_point != 0:
        raise InvalidUpdate(f"{_label(message)}: zero point must be 0 for this value encoding")
    if message.value_encoding in _SCALE_IN_VALUES and message.scale != 0:
        raise InvalidUpdate(f"{_label(message)}: scale must be 0; its scales travel in values")
    if message.value_encoding == pb.VALUE_ENCODING_SIGNED_LEVELS and not (
        message.scale == 0 or is_power_of_two(message.scale)
    ):
        raise InvalidUpdate(f"{_label(message)}: signed levels need a power-of-two scale")
    if message.value_encoding != pb.VALUE_ENCODING_HADAMARD_SIGN and message.rotation_seed:
        raise InvalidUpdate(
            f"{_label(message)}: rotation seed set for a value encoding without one"
        )

    sparsity = message.sparsity
    if sparsity == pb.SPARSITY_ENCODING_DENSE and count != size:
        raise InvalidUpdate(
            f"{_label(message)}: dense tensor of {size} elements has {count} values"
        )
    if count > size:
        raise InvalidUpdate(f"{_label(message)}: {count} values for {size} elements")
    wants_index_list = sparsity == pb.SPARSITY_ENCODING_INDICES
    if wants_index_list == (message.index_encoding == pb.INDEX_ENCODING_NONE):
        raise InvalidUpdate(
            f"{_label(message)}: index encoding does not match the sparsity encoding"
        )
    bitpacked = message.index_encoding == pb.INDEX_ENCODING_BITPACKED
    rice = message.index_encoding == pb.INDEX_ENCODING_RICE_GAPS
    width = index_bits_for(size) if bitpacked else 0
    if rice:
        if message.index_bits > MAX_RICE_PARAMETER:
            raise InvalidUpdate(
                f"{_label(message)}: Rice parameter (index_bits) must be in "
                f"0..{MAX_RICE_PARAMETER}; got {message.index_bits}"
            )
    elif message.index_bits != width:
        raise InvalidUpdate(
            f"{_label(message)}: index_bits is {message.index_bits}, expected {width}"
        )

    if sparsity == pb.SPARSITY_ENCODING_BITMASK:
        indices_size = packed_size(size, 1)
    elif bitpacked:
        indices_size = packed_size(count, width)
    elif message.index_encoding == pb.INDEX_ENCODING_VARINT_GAPS:
        indices_size = message.indices_size
        if not count <= indices_size <= MAX_VARINT_BYTES * count:
            raise InvalidUpdate(
                f"{_label(message)}: {indices_size} varint bytes for {count} indices"
            )
    elif rice:
        indices_size = message.indices_size
        low, high = _rice_size_range(count, size, message.index_bits)
        if not low <= indices_size <= high:
            raise InvalidUpdate(
                f"{_label(message)}: {indices_size} Rice bytes for {count} indices with "
                f"k={message.index_bits}, expected {low}..{high}"
            )
    else:
        indices_size = 0
    if message.indices_size != indices_size:
        raise InvalidUpdate(
            f"{_label(message)}: indices_size is {message.indices_size}, expected {indices_size}"
        )
    return TensorLayout(shape, size, indices_size, values_size(message.value_encoding, count, bits))


def decode_tensor(
    message: pb.CompressedTensor,
    *,
    expected_shape: tuple[int, ...] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> np.ndarray:
    """Decode ``message`` to a float32 array of its shape.

    Examples:
        >>> from stamen.compression.codec_stages import FP16
        >>> from stamen.compression.codecs import CodecPipeline
        >>> message = CodecPipeline([FP16()]).encode_tensor("b", np.ones(3))
        >>> decode_tensor(message, expected_shape=(3,)).tolist()
        [1.0, 1.0, 1.0]
    """
    return decode_tensor_and_mask(
        message, expected_shape=expected_shape, max_elements=max_elements
    )[0]


def decode_tensor_and_mask(
    message: pb.CompressedTensor,
    *,
    expected_shape: tuple[int, ...] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Like :func:`decode_tensor`, also returning the bool mask of a BITMASK tensor."""
    return decode_checked(message, check_layout(message, expected_shape, max_elements))


def decode_checked(
    message: pb.CompressedTensor, layout: TensorLayout
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`decode_tensor_and_mask` for a header :func:`check_layout` has already passed."""
    # Each read of a bytes field copies it out of the message: read each once.
    raw_indices, raw_values = message.indices, message.values
    crc = zlib.crc32(raw_values, zlib.crc32(raw_indices))
    if crc != message.crc32:
        raise InvalidUpdate(f"{_label(message)}: checksum mismatch (corrupted in transit?)")
    zipped = message.lossless == pb.LOSSLESS_ZLIB
    count = message.num_values
    if message.sparsity == pb.SPARSITY_ENCODING_BITMASK:
        index_what = f"mask bytes for {layout.size} elements"
    else:
        index_what = f"index bytes for {count} indices"
    indices = _unsqueeze(message, raw_indices, layout.indices_size, zipped, index_what)
    value_what = f"value bytes for {count} values at {message.bits} bits"
    values = _unsqueeze(message, raw_values, layout.values_size, zipped, value_what)
    try:
        kept = _decode_values(message, values)
        if not np.isfinite(kept).all():
            raise InvalidUpdate("decoded values are not all finite")
        mask = None
        if message.sparsity == pb.SPARSITY_ENCODING_DENSE:
            out = kept
        elif message.sparsity == pb.SPARSITY_ENCODING_BITMASK:
            out = np.zeros(layout.size, dtype=np.float32)
            mask = _decode_bitmask(indices, layout.size, message.num_values)
            out[mask] = kept
            mask = mask.reshape(layout.shape)
        else:
            out = np.zeros(layout.size, dtype=np.float32)
            out[_decode_positions(message, indices, layout.size)] = kept
    except InvalidUpdate as error:
        raise InvalidUpdate(f"{_label(message)}: {error}") from None
    return out.reshape(layout.shape), mask


def _label(message: pb.CompressedTensor) -> str:
    return f"tensor {_name(message)!r}"


def _name(message: pb.CompressedTensor) -> str:
    return message.name if len(message.name) <= 80 else message.name[:77] + "..."


def _unsqueeze(
    message: pb.CompressedTensor, data: bytes, expected: int, zipped: bool, what: str
) -> bytes:
    """Undo the lossless stage, never producing more than ``expected`` bytes."""
    if not zipped or expected == 0:
        if len(data) != expected:
            raise InvalidUpdate(f"{_label(message)}: {len(data)} {what}, expected {expected}")
        return data
    inflater = zlib.decompressobj()
    try:
        # One byte of headroom tells "exactly right" from "too long".
        out = inflater.decompress(data, expected + 1)
    except zlib.error as error:
        raise InvalidUpdate(f"{_label(message)}: corrupt zlib stream of {what} ({error})") from None
    if len(out) != expected or not inflater.eof or inflater.unused_data:
        raise InvalidUpdate(
            f"{_label(message)}: zlib stream of {what} does not inflate to exactly {expected} bytes"
        )
    return out


def _decode_values(message: pb.CompressedTensor, data: bytes) -> np.ndarray:
    count = message.num_values
    encoding = message.value_encoding
    if encoding == pb.VALUE_ENCODING_FP32:
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if encoding == pb.VALUE_ENCODING_FP16:
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if encoding == pb.VALUE_ENCODING_INT8_SYMMETRIC:
        levels = np.frombuffer(data, dtype=np.int8)
        if np.any(levels == -128):
            raise InvalidUpdate("int8 level -128 is outside the symmetric range")
        return dequantize(levels, float(message.scale))
    if encoding == pb.VALUE_ENCODING_SIGN:
        return decode_signs(data, count, float(message.scale))
    if encoding == pb.VALUE_ENCODING_HADAMARD_SIGN:
        head = 4 * len(segments(count))
        scales = np.frombuffer(data[:head], dtype="<f4")
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise InvalidUpdate("rotation scales must be finite and non-negative")
        signs = np.unpackbits(np.frombuffer(data[head:], dtype=np.uint8))
        if signs[count:].any():
            raise InvalidUpdate("non-zero padding bits after the packed signs")
        with np.errstate(over="ignore", invalid="ignore"):  # inf is rejected by the caller
            return unrotate(scales, signs[:count], int(message.rotation_seed))
    if encoding == pb.VALUE_ENCODING_SIGNED_LEVELS:
        return dequantize(unzigzag(unpack_levels(data, count, message.bits)), float(message.scale))
    levels = unpack_bits(data, count, message.bits)
    with np.errstate(over="ignore"):  # an overflow shows up as inf, rejected by the caller
        return dequantize(levels, float(message.scale), float(message.zero_point))


def dequantize(levels: np.ndarray, scale: float, zero_point: float = 0.0) -> np.ndarray:
    """Float32 values of quantization ``levels``: ``zero_point + level * scale``, in float64.

    The encoder uses it too, so its error feedback sees exactly what the receiver decodes.
    """
    return (zero_point + levels.astype(np.float64) * scale).astype(np.float32)


def _rice_size_range(count: int, size: int, k: int) -> tuple[int, int]:
    """Smallest and largest byte length of ``count`` Rice-coded gaps into ``size`` elements.

    Every code takes at least ``k + 1`` bits. The gaps of valid indices sum to at
    most ``size - count``, so their quotients sum to at most ``(size - count) >> k``:
    that bounds the stream, and so the decoder's work, by the tensor's size.
    """
    return packed_size(count, k + 1), packed_size(count * (k + 1) + ((size - count) >> k), 1)


def _decode_positions(message: pb.CompressedTensor, data: bytes, size: int) -> np.ndarray:
    count = message.num_values
    if message.index_encoding == pb.INDEX_ENCODING_BITPACKED:
        positions = unpack_bits(data, count, message.index_bits).astype(np.int64)
        if count > 1 and not np.all(np.diff(positions) > 0):
            raise InvalidUpdate("indices are not strictly increasing")
    elif message.index_encoding == pb.INDEX_ENCODING_RICE_GAPS:
        positions = np.cumsum(decode_rice(data, count, message.index_bits) + 1) - 1
    else:
        positions = np.cumsum(decode_varints(data, count) + 1) - 1
    if count and positions[-1] >= size:
        raise InvalidUpdate(f"index {int(positions[-1])} out of range for {size} elements")
    return positions


def _decode_bitmask(data: bytes, size: int, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[size:].any():
        raise InvalidUpdate("non-zero padding bits after the mask")
    mask = bits[:size].astype(bool)
    kept = int(np.count_nonzero(mask))
    if kept != count:
        raise InvalidUpdate(f"mask keeps {kept} elements but {count} values were sent")
    return mask
