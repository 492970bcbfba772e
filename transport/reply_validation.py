"""The gate every reply passes: decode and validate it into a model delta, or say why not.

Two reply kinds exist: a Stamen device's encoded update, and a plain Flower
ClientApp's dense ``ArrayRecord`` of trained weights. The dense kind is let in
only where the caller allows it (plain-client compatibility on, and the device
admitted as plain). Both are held to the same checks: the real bytes (not the
declared sizes) within the limit, the real shapes and dtypes after parsing
equal to the model's, finite values, a finite norm within the optional bound,
and a whole ``num-examples`` in range. The round and the model an encoded
update claims must be this round's; a dense reply is tied to its round by the
task it answers (the caller checks that).

Everything that is wrong with a reply ends in :class:`~stamen.core.errors.InvalidUpdate`
with one line the server logs and counts; nothing here raises anything else,
whatever the bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from stamen.compression import decode_update
from stamen.contract import (
    DENSE_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD,
    UPDATE_KEY,
    message_nbytes,
    payload_bytes,
    records_of,
)
from stamen.core.errors import InvalidUpdate, ShapeMismatch

MAX_NUM_EXAMPLES = 10**9
_FLOAT_DTYPES = frozenset(np.dtype(name) for name in ("float16", "float32", "float64"))


@dataclass(frozen=True)
class SentModel:
    """What the server sent in one round: needed to check and apply the replies."""

    model_hash: str
    decoded: dict[str, np.ndarray]
    """The model as devices reconstruct it: deltas are relative to this."""
    dense: dict[str, np.ndarray]
    """The exact global model, which plain Flower clients receive."""
    round_num: int = 0
    payload: bytes = b""
    """The encoded model on the wire."""


@dataclass(frozen=True)
class ValidUpdate:
    """A delta that passed every check, with its aggregation weight."""

    delta: dict[str, np.ndarray]
    num_examples: int
    wire_bytes: int
    plain: bool
    """True when the reply came from a plain Flower ClientApp."""
    train_loss: float | None
    node_id: int = 0
    """The device that sent it."""
    trust: float = 1.0
    """The share of its ``num_examples`` it counts for, from its agreement with the round
    (:mod:`stamen.transport.bounding`)."""

    @property
    def weight(self) -> float:
        """Its aggregation weight: the examples the server trusts it for."""
        return self.num_examples * self.trust


def validate_reply(
    message: Message,
    *,
    server_round: int,
    sent: SentModel,
    max_update_bytes: int,
    max_update_norm: float | None = None,
    allow_dense: bool = False,
) -> ValidUpdate:
    """Turn a reply into a validated delta, or raise :class:`InvalidUpdate`.

    Any failure while reading the reply, whatever it raises, is an
    :class:`InvalidUpdate` naming what failed: no reply can abort a round.
    """
    try:
        return _validate(
            message,
            server_round=server_round,
            sent=sent,
            max_update_bytes=max_update_bytes,
            max_update_norm=max_update_norm,
            allow_dense=allow_dense,
        )
    except InvalidUpdate:
        raise
    except Exception as error:  # an untrusted reply: any failure is the reply's, not the round's
        detail = " ".join(str(error).split())[:200]
        raise InvalidUpdate(f"reply could not be read ({type(error).__name__}: {detail})") from None


def _validate(
    message: Message,
    *,
    server_round: int,
    sent: SentModel,
    max_update_bytes: int,
    max_update_norm: float | None,
    allow_dense: bool,
) -> ValidUpdate:
    if message.has_error():
        reason = " ".join(str(message.error.reason).split())  # one line in logs and JSON
        raise InvalidUpdate(f"device reported an error: {reason[:500]}")
    content = message.content
    num_examples, train_loss = _read_metrics(message)
    shapes = {name: tuple(value.shape) for name, value in sent.decoded.items()}
    records = records_of(content, ArrayRecord)
    if UPDATE_KEY in records:
        if PAYLOAD not in records[UPDATE_KEY]:
            raise InvalidUpdate(f"'{UPDATE_KEY}' record has no '{PAYLOAD}' array")
        array = records[UPDATE_KEY][PAYLOAD]
        if array.dtype != "uint8":
            raise InvalidUpdate(f"update payload must be uint8 bytes; got {array.dtype}")
        if len(array.data) > max_update_bytes:
            raise InvalidUpdate(
                f"update of {len(array.data)} bytes exceeds the limit of {max_update_bytes}"
            )
        try:
            payload = payload_bytes(array)
        except Exception as error:  # a malformed serialized array from an untrusted peer
            raise InvalidUpdate(f"update payload cannot be read: {error}") from None
        decoded = decode_update(payload, expected_shapes=shapes, max_bytes=max_update_bytes)
        if decoded.round_num != server_round:
            raise InvalidUpdate(
                f"update is for round {decoded.round_num}, this is round {server_round}"
            )
        if decoded.base_model_hash != sent.model_hash:
            raise InvalidUpdate(
                f"update was computed against model {decoded.base_model_hash[:12]}, "
                f"but this round's model is {sent.model_hash[:12]}"
            )
        delta, plain = decoded.tensors, False
    elif DENSE_KEY in records:
        if not allow_dense:
            raise InvalidUpdate(
                "dense (plain Flower) reply refused: plain-client compatibility is off, or "
                "this device was admitted as a Stamen device"
            )
        weights = _dense_weights(records[DENSE_KEY], shapes, max_update_bytes)
        delta = {name: weights[name] - sent.dense[name] for name in shapes}
        plain = True
    else:
        raise InvalidUpdate(f"reply has neither '{UPDATE_KEY}' nor '{DENSE_KEY}' records")
    _check_norm(delta, max_update_norm)
    return ValidUpdate(
        delta=delta,
        num_examples=num_examples,
        wire_bytes=message_nbytes(message),
        plain=plain,
        train_loss=train_loss,
        node_id=message.metadata.src_node_id,
    )


def _read_metrics(message: Message) -> tuple[int, float | None]:
    records = records_of(message.content, MetricRecord)
    record = records.get(METRICS_KEY) or next(iter(records.values()), None)
    if record is None or NUM_EXAMPLES not in record:
        raise InvalidUpdate(f"reply has no '{NUM_EXAMPLES}' metric")
    count = record[NUM_EXAMPLES]
    if (
        not isinstance(count, int | float)
        or not 0 < count <= MAX_NUM_EXAMPLES
        or not float(count).is_integer()
    ):
        raise InvalidUpdate(
            f"'{NUM_EXAMPLES}' must be a whole number in 1..{MAX_NUM_EXAMPLES}; got {count!r}"
        )
    loss = record.get("train-loss")
    loss_value = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else None
    return int(count), loss_value


def _dense_weights(
    record: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]], max_bytes: int
) -> dict[str, np.ndarray]:
    names = set(record)
    if names != set(shapes):
        missing = sorted(set(shapes) - names)
        extra = sorted(names - set(shapes))
        raise InvalidUpdate(
            f"dense weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    total = sum(len(value.data) for value in record.values() if isinstance(value, Array))
    if total > max_bytes:
        raise InvalidUpdate(f"dense update of {total} bytes exceeds the limit of {max_bytes}")
    weights: dict[str, np.ndarray] = {}
    for name, expected in shapes.items():
        value = record[name]
        if not isinstance(value, Array):
            raise InvalidUpdate(f"tensor {name!r} is a {type(value).__name__}, not an array")
        if value.stype != "numpy.ndarray":
            raise InvalidUpdate(f"tensor {name!r} has serialization {value.stype!r}, not numpy")
        try:
            array = value.numpy()
        except Exception as error:  # malformed serialized array from an untrusted peer
            detail = " ".join(str(error).split())[:200]
            raise InvalidUpdate(f"tensor {name!r} cannot be read: {detail}") from None
        # The parsed array, not the declared metadata: that is what would be aggregated.
        if tuple(array.shape) != expected:
            raise ShapeMismatch(name, tuple(expected), tuple(array.shape))
        if array.dtype not in _FLOAT_DTYPES:
            raise InvalidUpdate(
                f"tensor {name!r} must be float16, float32 or float64; got {array.dtype}"
            )
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InvalidUpdate(f"tensor {name!r} holds NaN or infinite values")
        weights[name] = array
    return weights


def _check_norm(delta: Mapping[str, np.ndarray], bound: float | None) -> None:
    # Float32 dot products: a few units in the 6th digit of the norm, plenty for a bound.
    norm = math.sqrt(sum(float(np.dot(v.ravel(), v.ravel())) for v in delta.values()))
    if not math.isfinite(norm):
        raise InvalidUpdate("update norm is not finite")
    if bound is not None and norm > bound:
        raise InvalidUpdate(f"update norm {norm:.3g} exceeds the bound {bound:.3g}")
