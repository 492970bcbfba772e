"""Envelopes around compressed tensors: ``ModelUpdate`` (uplink) and ``ModelPayload`` (downlink).

Parsing is for hostile input: the size limit is checked before the protobuf
parser sees a byte, the format version and hash length are checked before any
tensor, and every tensor's header (names, shapes, sizes) is checked before any
tensor is decoded, so a bad payload costs no large allocation. Every failure is
:class:`stamen.core.errors.InvalidUpdate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from stamen.compression.tensor_decode import MAX_ELEMENTS, check_layout, decode_checked
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

FORMAT_VERSION = 1
"""The envelope version this build writes and reads."""
HASH_BYTES = 32

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


def parse(kind: type[Envelope], payload: bytes, max_bytes: int) -> Envelope:
    """Parse an envelope of type ``kind``, checking size, version and hash length."""
    what = "update" if kind is pb.ModelUpdate else "model payload"
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidUpdate(f"{what} must be bytes; got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise InvalidUpdate(f"{what} of {len(payload)} bytes exceeds the limit of {max_bytes}")
    envelope = kind()
    try:
        envelope.ParseFromString(bytes(payload))
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
    expected_shapes: Mapping[str, tuple[int, ...]] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode all tensors of an envelope: ``(tensors, masks of BITMASK tensors)``.

    With ``expected_shapes`` the names must match exactly and so must each shape;
    without, the total element count is capped at ``MAX_ELEMENTS``.
    """
    _check_names([message.name for message in messages], expected_shapes)
    budget = MAX_ELEMENTS
    layouts = []
    for message in messages:
        layout = check_layout(message, _expected(expected_shapes, message.name))
        layouts.append(layout)
        if expected_shapes is None:
            budget -= layout.size
            if budget < 0:
                raise InvalidUpdate(f"tensors hold more than {MAX_ELEMENTS} elements in total")
    tensors: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for message, layout in zip(messages, layouts, strict=True):
        array, mask = decode_checked(message, layout)
        tensors[message.name] = array
        if mask is not None:
            masks[message.name] = mask
    return tensors, masks


def _expected(
    expected_shapes: Mapping[str, tuple[int, ...]] | None, name: str
) -> tuple[int, ...] | None:
    return None if expected_shapes is None else tuple(expected_shapes[name])


def _check_names(names: list[str], expected_shapes: Mapping[str, object] | None) -> None:
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    duplicates = sorted(repeated)
    if duplicates:
        raise InvalidUpdate(f"duplicate tensor names: {_short_list(duplicates)}")
    if "" in seen:
        raise InvalidUpdate("a tensor has an empty name")
    if expected_shapes is None:
        return
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
