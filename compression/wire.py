"""Envelopes around compressed tensors: ``ModelUpdate`` (uplink) and ``ModelPayload`` (downlink).

Parsing is for hostile input, and the receiver always knows the shapes of its own
model. Before the protobuf parser sees a byte, the size is checked against the
caller's limit and against what those shapes can need, and a scan of the wire
structure (:mod:`stamen.compression.wire_scan`) caps the tensor count at the
model's. The format version and hash length are checked before any tensor, and
every tensor's header (names, shapes, sizes) before any tensor is decoded, so a
bad payload costs no large allocation. Every failure is
:class:`stamen.core.errors.InvalidUpdate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from stamen.compression.tensor_decode import check_layout, decode_checked
from stamen.compression.wire_scan import scan_envelope
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

FORMAT_VERSION = 1
"""The envelope version this build writes and reads."""
HASH_BYTES = 32
BYTES_PER_ELEMENT = 12
"""Most bytes one element takes in an envelope a receiver accepts: up to 4 for its
value and, in a sparse tensor, up to 8 for its index (a bit-packed one)."""
BYTES_PER_TENSOR = 1024
"""Room for one tensor's header fields, shape, checksum and zlib framing, and more."""
BYTES_PER_ENVELOPE = 4096
"""Room for the envelope's own fields, and fields a later build may add."""

Envelope = TypeVar("Envelope", pb.ModelUpdate, pb.ModelPayload)


def hash_to_bytes(hex_digest: str) -> bytes:
    """The 32 raw bytes of a SHA-256 hex digest; ValueError if it is not one."""
    try:
        raw = bytes.fromhex(hex_digest)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != HASH_BYTES or raw.hex() != hex_digest:
        raise ValueError(f"model hash must be 64 lowercase hex digits; got {hex_digest!r}")
    return raw


def serialize(envelope: pb.ModelUpdate | pb.ModelPayload) -> bytes:
    """Deterministic bytes for an envelope (same message, same bytes)."""
    return envelope.SerializeToString(deterministic=True)


def size_bound(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The most bytes an envelope of tensors of ``expected_shapes`` can take when valid."""
    return BYTES_PER_ENVELOPE + sum(
        BYTES_PER_TENSOR + len(name.encode()) + BYTES_PER_ELEMENT * math.prod(shape)
        for name, shape in expected_shapes.items()
    )


def parse(
    kind: type[Envelope],
    payload: bytes,
    max_bytes: int,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Envelope:
    """Parse an envelope of type ``kind``, checking size, structure, version and hash length.

    With ``expected_shapes`` (every decoder of untrusted bytes passes them) the size is
    also capped by :func:`size_bound` and the tensor count by theirs; without, the
    count is capped at :data:`~stamen.compression.wire_scan.MAX_TENSORS`, for
    envelopes this process wrote itself.
    """
    what = "update" if kind is pb.ModelUpdate else "model payload"
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidUpdate(f"{what} must be bytes; got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise InvalidUpdate(f"{what} of {len(payload)} bytes exceeds the limit of {max_bytes}")
    if expected_shapes is not None and len(payload) > (bound := size_bound(expected_shapes)):
        raise InvalidUpdate(
            f"{what} of {len(payload)} bytes exceeds the {bound} bytes a valid one can take "
            f"for this model ({len(expected_shapes)} tensors)"
        )
    data = bytes(payload)
    scan_envelope(
        data,
        kind.DESCRIPTOR,
        model_tensors=None if expected_shapes is None else len(expected_shapes),
        what=what,
    )
    envelope = kind()
    try:
        envelope.ParseFromString(data)
    except DecodeError as error:
        raise InvalidUpdate(f"{what} does not parse as {kind.__name__}: {error}") from None
    if envelope.format_version != FORMAT_VERSION:
        raise InvalidUpdate(
            f"{what} has format version {envelope.format_version}; "
            f"this build reads version {FORMAT_VERSION}"
        )
    digest = (
        envelope.base_model_sha256
        if isinstance(envelope, pb.ModelUpdate)
        else envelope.model_sha256
    )
    if len(digest) != HASH_BYTES:
        raise InvalidUpdate(f"{what} model hash has {len(digest)} bytes, expected {HASH_BYTES}")
    return envelope


def decode_tensors(
    messages: Sequence[pb.CompressedTensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode all tensors of an envelope: ``(tensors, masks of BITMASK tensors)``.

    The names must be exactly those of ``expected_shapes``, and each shape its own, so
    nothing decoded (zlib output included) is larger than the receiver's model.
    """
    _check_names([message.name for message in messages], expected_shapes)
    layouts = [check_layout(message, tuple(expected_shapes[message.name])) for message in messages]
    tensors: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for message, layout in zip(messages, layouts, strict=True):
        array, mask = decode_checked(message, layout)
        tensors[message.name] = array
        if mask is not None:
            masks[message.name] = mask
    return tensors, masks


FLAT_NAME = ""
"""The name of the one tensor of a flat envelope."""


def flatten(
    tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """The tensors as one float32 vector under :data:`FLAT_NAME`, in ``shapes``' order
    (default: ``tensors``' own); a tensor missing from ``tensors`` counts as zeros.

    Examples:
        >>> flatten({"a": np.ones((2, 2)), "b": np.zeros(1)})[""].tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    order = shapes if shapes is not None else {k: np.shape(v) for k, v in tensors.items()}
    parts = []
    for name, shape in order.items():
        value = tensors.get(name)
        if value is None:
            parts.append(np.zeros(math.prod(shape), dtype=np.float32))
            continue
        if np.shape(value) != tuple(shape):
            raise ValueError(f"{name!r} has shape {np.shape(value)}, expected {tuple(shape)}")
        parts.append(np.asarray(value, dtype=np.float32).ravel())
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return {FLAT_NAME: vector}


def unflatten(
    flat: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`: the vector cut into ``shapes``, in their order."""
    vector = flat[FLAT_NAME]
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def decode_flat(
    messages: Sequence[pb.CompressedTensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Decode a flat envelope's one tensor and cut it into ``expected_shapes``, in order."""
    if len(messages) != 1 or messages[0].name != FLAT_NAME:
        raise InvalidUpdate("a flat envelope must hold exactly one tensor, with an empty name")
    total = sum(math.prod(shape) for shape in expected_shapes.values())
    message = messages[0]
    # A bitmask here only says which entries travel; it is not a pruning mask.
    vector, _ = decode_checked(message, check_layout(message, (total,)))
    return unflatten({FLAT_NAME: vector}, expected_shapes)


def _check_names(names: list[str], expected_shapes: Mapping[str, object]) -> None:
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    duplicates = sorted(repeated)
    if duplicates:
        raise InvalidUpdate(f"duplicate tensor names: {_short_list(duplicates)}")
    if "" in seen:
        raise InvalidUpdate("a tensor has an empty name")
    missing = sorted(set(expected_shapes) - seen)
    extra = sorted(seen - set(expected_shapes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_short_list(missing)}")
        if extra:
            parts.append(f"unexpected {_short_list(extra)}")
        raise InvalidUpdate("tensor names do not match the model: " + "; ".join(parts))


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name[:60]) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
