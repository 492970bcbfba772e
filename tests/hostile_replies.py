"""The corpus of hostile replies: builders that turn a device's honest reply into a hostile one.

Each builder takes the task a device was sent and the honest reply the real
ClientApp made for it, and returns what a hostile device sends instead. Two
suites play the corpus: ``test_hostile_peers`` through the real strategy on the
simulation grid, and ``test_edge_hostile_replies`` through a real ``stamen
server`` over TLS, where the hostile reply travels the agent's wire format.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.client import client_app
from stamen.compression import decode_update
from stamen.compression.wire import parse, serialize
from stamen.config import AttackKind, AttackSettings, StamenConfig
from stamen.contract import (
    CONFIG_KEY,
    DENSE_KEY,
    METRICS_KEY,
    MODEL_KEY,
    PAYLOAD,
    UPDATE_KEY,
    TrainTask,
    payload_bytes,
)
from stamen.launch import fleet_of
from stamen.protos.update.v1 import update_pb2 as pb
from stamen.simulations.attacks import attack_reply, corrupt_payload, kept_shapes

Reply = Callable[[Message, Context, Message], Message]
"""(the task, the device's context, the honest reply it would have sent) -> what it sends."""


def with_payload(reply: Message, payload: bytes, **metrics: int) -> Message:
    records = dict(reply.content.items())
    records[UPDATE_KEY] = ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))})
    if metrics:
        records[METRICS_KEY] = MetricRecord({"num-examples": metrics["num_examples"]})
    return replaced(reply, records)


def replaced(reply: Message, records: dict[str, Any]) -> Message:
    """``reply`` with its content replaced: it still answers its task (a fresh reply would
    need the server side's run identity, which a device does not hold)."""
    reply.content = RecordDict(records)
    return reply


def honest_payload(reply: Message) -> bytes:
    return payload_bytes(reply.content.array_records[UPDATE_KEY][PAYLOAD])


def task_of(message: Message) -> TrainTask:
    return TrainTask.from_config_record(message.content.config_records[CONFIG_KEY])


def attacked(kind: AttackKind, scale: float = 10.0) -> Reply:
    def send(message: Message, context: Context, honest: Message) -> Message:
        return attack_reply(message, honest, context, AttackSettings(kind=kind, scale=scale))

    return send


def dense_weights(message: Message, context: Context, honest: Message) -> Message:
    """The global model plus 1000 times the honest delta, as plain Flower weights."""
    shapes = _shapes(message, context)
    update = decode_update(honest_payload(honest), expected_shapes=shapes)
    weights = {
        name: Array((value * 0 + 1000.0 * update.tensors[name]).astype(np.float32))
        for name, value in _model(message, context).items()
    }
    records = {
        DENSE_KEY: ArrayRecord(weights),
        METRICS_KEY: MetricRecord({"num-examples": 10**6}),
    }
    return replaced(honest, records)


def lying_shapes(message: Message, context: Context, honest: Message) -> Message:
    """Dense weights whose metadata declares the model's shapes but whose bytes hold more."""
    arrays = {}
    for name, value in _model(message, context).items():
        big = Array(np.ones((64, *value.shape), np.float32))
        arrays[name] = Array(
            dtype=big.dtype, shape=tuple(value.shape), stype=big.stype, data=big.data
        )
    records = {DENSE_KEY: ArrayRecord(arrays), METRICS_KEY: MetricRecord({"num-examples": 10})}
    return replaced(honest, records)


def other_model(message: Message, context: Context, honest: Message) -> Message:
    envelope = parse(pb.ModelUpdate, honest_payload(honest), max_bytes=2**26)
    envelope.base_model_sha256 = bytes(32 * [0xAB])
    return with_payload(honest, serialize(envelope))


def another_devices_task(message: Message, context: Context, honest: Message) -> Message:
    """The honest reply, but claiming to come from the next device."""
    honest.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id + 1
    return honest


def truncated(message: Message, context: Context, honest: Message) -> Message:
    payload = honest_payload(honest)
    return with_payload(honest, payload[: len(payload) // 2])


def oversized(message: Message, context: Context, honest: Message) -> Message:
    return with_payload(honest, bytes(2**20 + 1))


def zlib_bomb(message: Message, context: Context, honest: Message) -> Message:
    """One tensor's values replaced by 130 KB of zlib that inflates to 128 MiB.

    Small enough to pass the size bound a valid update of the digits MLP can take
    (217 KB), and with its indices zlib-compressed too, as a real zlib stage writes
    them, so it is the bounded inflation of the values that must stop it.
    """
    envelope = parse(pb.ModelUpdate, honest_payload(honest), max_bytes=2**26)
    tensor = envelope.tensors[0]
    assert tensor.lossless == pb.LOSSLESS_NONE and tensor.indices, "a sparse, unzipped tensor"
    tensor.indices = zlib.compress(tensor.indices, 9)
    tensor.values = zlib.compress(bytes(2**27), 9)
    tensor.lossless = pb.LOSSLESS_ZLIB
    tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return with_payload(honest, serialize(envelope))


def tiny_tensors(count: int) -> Reply:
    """``count`` empty tensor entries, 5 bytes each, that would parse into ``count`` objects."""

    def send(message: Message, context: Context, honest: Message) -> Message:
        entry = pb.CompressedTensor(name="x").SerializeToString()
        field_tag = bytes([(4 << 3) | 2, len(entry)])
        head = parse(pb.ModelUpdate, honest_payload(honest), max_bytes=2**26)
        del head.tensors[:]
        return with_payload(honest, serialize(head) + (field_tag + entry) * count)

    return send


def huge_values(message: Message, context: Context, honest: Message) -> Message:
    settings = AttackSettings(kind=AttackKind.SCALE, scale=1e9)
    task = task_of(message)
    payload = corrupt_payload(
        honest_payload(honest),
        task,
        settings,
        seed=(0, task.round_num),
        shapes=_shapes(message, context),
    )
    return with_payload(honest, payload)


def huge_num_examples(message: Message, context: Context, honest: Message) -> Message:
    return with_payload(honest, honest_payload(honest), num_examples=10**8)


def _model(message: Message, context: Context) -> dict[str, np.ndarray]:
    """The dense model a plain client would get; a Stamen device gets the encoded one."""
    records = message.content.array_records
    if DENSE_KEY in records:
        return {name: records[DENSE_KEY][name].numpy() for name in records[DENSE_KEY]}
    return {name: np.zeros(shape, np.float32) for name, shape in _shapes(message, context).items()}


def _shapes(message: Message, context: Context) -> dict[str, tuple[int, ...]]:
    """The model's shapes: from the model the device kept (downlink deltas send one flat
    vector), else from the payload's own tensors."""
    kept = kept_shapes(context)
    if kept is not None:
        return kept
    from stamen.compression import decode_model

    payload = payload_bytes(message.content.array_records[MODEL_KEY][PAYLOAD])
    envelope = parse(pb.ModelPayload, payload, max_bytes=2**26)
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in envelope.tensors}
    return {
        name: tuple(v.shape)
        for name, v in decode_model(payload, expected_shapes=shapes).tensors.items()
    }


@dataclass(frozen=True)
class Case:
    send: Reply
    reason: str | None
    """What the rejection says (``None``: the reply is accepted, bounded)."""
    rounds: tuple[int, ...] = (1,)
    """The rounds whose hostile reply is refused."""
    overrides: dict[str, Any] = field(default_factory=dict)
    bounded: str | None = None
    """The round metric that shows the reply was bounded, for accepted replies."""


CASES: dict[str, Case] = {
    "dense while compatibility is off": Case(dense_weights, "dense (plain Flower) reply refused"),
    "shapes that differ from the metadata": Case(
        lying_shapes,
        "expected shape",
        overrides={"federation.plain_client_compat": True},
    ),
    "nan": Case(attacked(AttackKind.NAN), "not all finite"),
    "inf": Case(attacked(AttackKind.INF), "not all finite"),
    "replay of an old round": Case(attacked(AttackKind.STALE), "is for round 1", rounds=(2,)),
    "update against another model": Case(other_model, "computed against model abababababab"),
    "another device's task": Case(another_devices_task, "does not answer the task"),
    "truncated payload": Case(truncated, "does not parse"),
    "oversized payload": Case(
        oversized, "exceeds the limit", overrides={"federation.max_update_bytes": 2**20}
    ),
    "zlib bomb": Case(zlib_bomb, "does not inflate to exactly"),
    # A million entries take 5 MB: more than any valid update of the model, refused unread.
    "a million tiny tensors": Case(tiny_tensors(10**6), "bytes a valid one can take"),
    # Within that size, the raw-byte scan counts the entries before protobuf builds one.
    "more tensors than the model": Case(tiny_tensors(40_000), "tensors; the model has"),
    "huge values": Case(huge_values, None, bounded="clipped"),
    "huge num-examples": Case(huge_num_examples, None, bounded="capped_weights"),
}


def hostile_app(config: StamenConfig, send: Reply) -> ClientApp:
    honest_app = client_app(fleet_of(config))
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return send(message, context, honest_app(message, context))

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return honest_app(message, context)

    return app
