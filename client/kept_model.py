"""The model a device keeps between rounds, so that the next can come as a delta to it.

It lives in the device's Flower ``Context.state`` as the exact, compact whole-model payload
(:func:`~stamen.compression.kept_model_bytes`, about a byte a parameter), under a key that is
its model hash, so the hash is known without decoding it. The edge agent persists the same
bytes in its state file (``AgentState.model``).
"""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from stamen.compression import DecodedModel, decode_model, kept_model_bytes, model_payload_hash
from stamen.contract import LAST_MODEL_KEY, payload_bytes

Shapes = tuple[tuple[str, tuple[int, ...]], ...]


def kept_hash(context: Context) -> str | None:
    """The hash of the model the device keeps, if it keeps one."""
    record = context.state.array_records.get(LAST_MODEL_KEY)
    return next(iter(record), None) if record is not None else None


def kept_payload(context: Context) -> bytes:
    """The kept model as a payload, or ``b""`` when the device keeps none."""
    record = context.state.array_records.get(LAST_MODEL_KEY)
    if record is None:
        return b""
    return next((payload_bytes(array) for array in record.values()), b"")


def load_kept_payload(payload: bytes, shapes: Shapes) -> DecodedModel | None:
    """A kept model's payload, decoded and verified against ``shapes``; None if it does not
    fit this model (the device then needs the whole model)."""
    try:
        return _decoded_kept(payload, shapes)
    except ValueError:  # InvalidUpdate included: a stale or damaged file counts as none
        return None


def keep(context: Context, model: DecodedModel) -> None:
    """Keep ``model`` (one the server asked devices to keep) as the device's last model."""
    if kept_hash(context) == model.model_hash:
        return
    context.state[LAST_MODEL_KEY] = ArrayRecord(
        {model.model_hash: Array(np.frombuffer(_kept_bytes(model), np.uint8))}
    )


def restore_kept(context: Context, payload: bytes) -> None:
    """Put a kept model's payload (from the agent's state file) back into ``context``.

    Only its hash is read here; :func:`load_kept` verifies it against the model's shapes
    when a delta needs it, and a damaged one then counts as none.
    """
    if not payload:
        return
    try:
        digest = model_payload_hash(payload)
    except ValueError:
        return
    context.state[LAST_MODEL_KEY] = ArrayRecord({digest: Array(np.frombuffer(payload, np.uint8))})


@functools.lru_cache(maxsize=4)
def _decoded_kept(payload: bytes, shapes: Shapes) -> DecodedModel:
    # The devices a process runs in a round mostly keep the same model: decode it once.
    return decode_model(payload, expected_shapes=dict(shapes))


_KEPT_BYTES: dict[str, bytes] = {}


def _kept_bytes(model: DecodedModel) -> bytes:
    # Every device of a round that rebuilt the same model stores the same bytes.
    cached = _KEPT_BYTES.get(model.model_hash)
    if cached is None:
        _KEPT_BYTES.clear()
        cached = _KEPT_BYTES[model.model_hash] = kept_model_bytes(model)
    return cached
