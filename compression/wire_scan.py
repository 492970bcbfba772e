"""A structural scan of an envelope's protobuf wire format, run before the parser.

The protobuf parser builds one message for every repeated entry it reads: two bytes
of an empty tensor entry cost a message of about 130 bytes, so a payload of 2 MB
holding a million of them costs 130 MB before any check of ours can run. This scan
walks the tags and lengths of the raw bytes, allocating nothing per field, and stops
at the first entry over a limit: more tensors than the model has, more dimensions
than ``MAX_NDIM``, more fields than a tensor can have. It also names, with their
byte offset, the malformations the parser would reject without saying where:
truncated fields, varints longer than 64 bits, wire types that do not match the
schema, and groups (no part of this format).
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from stamen.compression.tensor_decode import MAX_NDIM
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

MAX_TENSORS = 2**16
"""Most tensors in an envelope when the receiver does not say how many its model has."""
MAX_TENSOR_FIELDS = 64
"""Most fields in one tensor: its 16, up to ``MAX_NDIM`` unpacked dimensions, and room
for fields a later build may add."""
MAX_ENVELOPE_FIELDS = 64
"""Most fields in an envelope besides its tensors (it has three)."""

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}
_MAX_FIELD_NUMBER = 2**29 - 1
_MAX_VARINT_BYTES = 10
_FIXED32_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32}
_FIXED64_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64}
_LENGTH_TYPES = {
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_MESSAGE,
}


def scan_envelope(
    payload: bytes, descriptor: Descriptor, *, model_tensors: int | None, what: str
) -> None:
    """Check the wire structure of an envelope of type ``descriptor``; ``InvalidUpdate`` if bad.

    An envelope holds at most ``model_tensors`` tensors (``MAX_TENSORS`` if None). The
    scan stops at the first tensor past that, so the cost of a hostile payload is
    bounded by the limit, not by the payload.

    Examples:
        >>> scan_envelope(b"\\x22\\x00" * 3, pb.ModelUpdate.DESCRIPTOR, model_tensors=2,
        ...               what="update")
        Traceback (most recent call last):
        ...
        stamen.core.errors.InvalidUpdate: update has more than 2 tensors; the model has 2
    """
    if model_tensors is None:
        max_tensors, why = MAX_TENSORS, "the most this format accepts"
    else:
        max_tensors, why = model_tensors, f"the model has {model_tensors}"
    wire_types = _wire_types(descriptor)
    tensors_field = descriptor.fields_by_name["tensors"].number
    # A model payload names its pruned tensors and may list a step per tensor: no more
    # entries of either than the model has tensors.
    per_tensor = {
        field.number: field.name for field in descriptor.fields if field.name in ("pruned", "steps")
    }
    counts = dict.fromkeys(per_tensor, 0)
    tensors = others = 0
    try:
        for number, wire, tag_at, start, end in _fields(payload, 0, len(payload), descriptor):
            _check_wire_type(number, wire, wire_types, descriptor, tag_at)
            if number == tensors_field:
                tensors += 1
                if tensors > max_tensors:
                    raise InvalidUpdate(f"{what} has more than {max_tensors} tensors; {why}")
                _scan_tensor(payload, start, end, what, tensors)
            elif number in per_tensor:
                counts[number] += 1
                if counts[number] > max_tensors:
                    raise InvalidUpdate(
                        f"{what} has more than {max_tensors} {per_tensor[number]} entries; {why}"
                    )
            else:
                others += 1
                if others > MAX_ENVELOPE_FIELDS:
                    raise InvalidUpdate(
                        f"{what} has more than {MAX_ENVELOPE_FIELDS} fields besides its tensors"
                    )
    except _Malformed as error:
        raise InvalidUpdate(f"{what} does not parse as {descriptor.name}: {error}") from None


class _Malformed(Exception):
    """Bytes that are not protobuf wire format; the message says what and where."""


def _scan_tensor(data: bytes, start: int, end: int, what: str, number_in_envelope: int) -> None:
    if start == end:
        return
    descriptor = pb.CompressedTensor.DESCRIPTOR
    shape_field = descriptor.fields_by_name["shape"].number
    where = f"{what} tensor #{number_in_envelope}"
    fields = dims = 0
    try:
        for number, wire, tag_at, value_start, value_end in _fields(data, start, end, descriptor):
            fields += 1
            if fields > MAX_TENSOR_FIELDS:
                raise InvalidUpdate(f"{where} has more than {MAX_TENSOR_FIELDS} fields")
            _check_wire_type(number, wire, _TENSOR_WIRE_TYPES, descriptor, tag_at)
            if number != shape_field:
                continue
            if wire == _VARINT:
                dims += 1
            else:  # packed: count the varints, stopping as soon as there are too many
                position = value_start
                while position < value_end and dims <= MAX_NDIM:
                    _, position = _varint(data, position, value_end)
                    dims += 1
            if dims > MAX_NDIM:
                raise InvalidUpdate(f"{where} has more than {MAX_NDIM} dimensions")
    except _Malformed as error:
        raise _Malformed(f"tensor #{number_in_envelope}: {error}") from None


def _fields(
    data: bytes, start: int, end: int, descriptor: Descriptor
) -> Iterator[tuple[int, int, int, int, int]]:
    """``(number, wire type, tag start, value start, value end)`` of each field in
    ``data[start:end]``."""
    position = start
    while position < end:
        tag_at = position
        tag, position = _varint(data, position, end)
        number, wire = tag >> 3, tag & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise _Malformed(f"invalid field number {number} at byte {tag_at}")
        if wire == _VARINT:
            value_start = position
            _, position = _varint(data, position, end)
        else:
            if wire == _LENGTH:
                length, position = _varint(data, position, end)
            elif wire == _FIXED64:
                length = 8
            elif wire == _FIXED32:
                length = 4
            else:
                raise _Malformed(
                    f"{_field_name(descriptor, number)} at byte {tag_at} has wire type "
                    f"{wire}, which this format does not use (a group, or invalid)"
                )
            value_start = position
            position += length
            if position > end:
                raise _Malformed(
                    f"truncated: {_field_name(descriptor, number)} at byte {tag_at} "
                    f"needs {length} bytes, {end - value_start} remain"
                )
        yield number, wire, tag_at, value_start, position


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    if position < end and data[position] < 0x80:  # most tags and lengths: one byte
        return data[position], position + 1
    start, value, shift = position, 0, 0
    while True:
        if position >= end:
            raise _Malformed(f"truncated inside a varint at byte {start}")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if position - start >= _MAX_VARINT_BYTES:
            raise _Malformed(f"varint at byte {start} is longer than 64 bits")
    if value >> 64:
        raise _Malformed(f"varint at byte {start} is longer than 64 bits")
    return value, position


def _wire_types(descriptor: Descriptor) -> dict[int, frozenset[int]]:
    """The wire types each field of ``descriptor`` may arrive in."""
    allowed: dict[int, frozenset[int]] = {}
    for field in descriptor.fields:
        if field.type in _LENGTH_TYPES:
            wire = _LENGTH
        elif field.type in _FIXED32_TYPES:
            wire = _FIXED32
        elif field.type in _FIXED64_TYPES:
            wire = _FIXED64
        else:
            wire = _VARINT
        # A repeated scalar may come packed (one length-delimited field) or not.
        packable = field.is_repeated and wire != _LENGTH
        allowed[field.number] = frozenset({wire, _LENGTH} if packable else {wire})
    return allowed


_TENSOR_WIRE_TYPES = _wire_types(pb.CompressedTensor.DESCRIPTOR)


def _check_wire_type(
    number: int,
    wire: int,
    wire_types: dict[int, frozenset[int]],
    descriptor: Descriptor,
    at: int,
) -> None:
    allowed = wire_types.get(number)
    if allowed is None or wire in allowed:  # unknown fields are skipped, as protobuf does
        return
    expected = " or ".join(_WIRE_NAMES[w] for w in sorted(allowed))
    raise _Malformed(
        f"{_field_name(descriptor, number)} at byte {at} is {_WIRE_NAMES[wire]}, "
        f"expected {expected}"
    )


def _field_name(descriptor: Descriptor, number: int) -> str:
    field = descriptor.fields_by_number.get(number)
    return f"field {number}" + (f" ({field.name})" if field is not None else "")
