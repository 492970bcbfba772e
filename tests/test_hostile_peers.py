"""A corpus of hostile replies through the real strategy, in real federations.

One device of eight runs a hostile ClientApp; the others run the real one. For
every case the server must refuse the reply with a reason a user can read (or,
for well-formed but outsized updates, bound it), the round must go on with the
seven honest devices, the model must stay finite, and the process's peak memory
must stay within a bound of the honest run's.
"""

from __future__ import annotations

import gc
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.client import client_app
from stamen.compression import decode_update
from stamen.compression.wire import parse, serialize
from stamen.config import AttackKind, AttackSettings, StamenConfig, load_config
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
from stamen.server import CollectingReporter, server_app
from stamen.simulations import LocalGrid
from stamen.simulations.attacks import attack_reply, corrupt_payload

HOSTILE = 1
"""The hostile device's partition; its node id is ``HOSTILE + 1``."""
DEVICES = 8
MEMORY_BOUND = 64 * 2**20
"""Most the peak RSS may grow beyond the honest run's while a hostile federation runs."""

Reply = Callable[[Message, Context, Message], Message]
"""(the task, the device's context, the honest reply it would have sent) -> what it sends."""


def with_payload(reply: Message, payload: bytes, **metrics: int) -> Message:
    records = dict(reply.content.items())
    records[UPDATE_KEY] = ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, np.uint8))})
    if metrics:
        records[METRICS_KEY] = MetricRecord({"num-examples": metrics["num_examples"]})
    return Message(RecordDict(records), reply_to=reply_to(reply))


def reply_to(reply: Message) -> Message:
    """A stand-in for the task ``reply`` answers, to build a fresh reply to it."""
    task = Message(RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")
    task.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    task.metadata.__dict__["_group_id"] = reply.metadata.group_id
    return task


def honest_payload(reply: Message) -> bytes:
    return payload_bytes(reply.content.array_records[UPDATE_KEY][PAYLOAD])


def task_of(message: Message) -> TrainTask:
    return TrainTask.from_config_record(message.content.config_records[CONFIG_KEY])


def attacked(kind: AttackKind, scale: float = 10.0) -> Reply:
    def send(message: Message, context: Context, honest: Message) -> Message:
        return attack_reply(message, honest, context, AttackSettings(kind=kind, scale=scale))

    return send


def dense_weights(message: Message, honest: Message) -> Message:
    """The global model plus 1000 times the honest delta, as plain Flower weights."""
    update = decode_update(honest_payload(honest), expected_shapes=_shapes(message))
    weights = {
        name: Array((value * 0 + 1000.0 * update.tensors[name]).astype(np.float32))
        for name, value in _model(message).items()
    }
    records = {
        DENSE_KEY: ArrayRecord(weights),
        METRICS_KEY: MetricRecord({"num-examples": 10**6}),
    }
    return Message(RecordDict(records), reply_to=reply_to(honest))


def lying_shapes(message: Message, honest: Message) -> Message:
    """Dense weights whose metadata declares the model's shapes but whose bytes hold more."""
    arrays = {}
    for name, value in _model(message).items():
        big = Array(np.ones((64, *value.shape), np.float32))
        arrays[name] = Array(
            dtype=big.dtype, shape=tuple(value.shape), stype=big.stype, data=big.data
        )
    records = {DENSE_KEY: ArrayRecord(arrays), METRICS_KEY: MetricRecord({"num-examples": 10})}
    return Message(RecordDict(records), reply_to=reply_to(honest))


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
    """One tensor's values replaced by 200 KB of zlib that inflates to 256 MB."""
    envelope = parse(pb.ModelUpdate, honest_payload(honest), max_bytes=2**26)
    tensor = envelope.tensors[0]
    tensor.values = zlib.compress(bytes(2**28), 9)
    tensor.lossless = pb.LOSSLESS_ZLIB
    tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return with_payload(honest, serialize(envelope))


def tiny_tensors(message: Message, context: Context, honest: Message) -> Message:
    """A million empty tensor entries: a few megabytes that parse into a million objects."""
    entry = pb.CompressedTensor(name="x").SerializeToString()
    field_tag = bytes([(4 << 3) | 2, len(entry)])
    head = parse(pb.ModelUpdate, honest_payload(honest), max_bytes=2**26)
    del head.tensors[:]
    return with_payload(honest, serialize(head) + (field_tag + entry) * 1_000_000)


def huge_values(message: Message, context: Context, honest: Message) -> Message:
    settings = AttackSettings(kind=AttackKind.SCALE, scale=1e9)
    task = task_of(message)
    payload = corrupt_payload(honest_payload(honest), task, settings, seed=(0, task.round_num))
    return with_payload(honest, payload)


def huge_num_examples(message: Message, context: Context, honest: Message) -> Message:
    return with_payload(honest, honest_payload(honest), num_examples=10**8)


def _model(message: Message) -> dict[str, np.ndarray]:
    """The dense model a plain client would get; a Stamen device gets the encoded one."""
    records = message.content.array_records
    if DENSE_KEY in records:
        return {name: records[DENSE_KEY][name].numpy() for name in records[DENSE_KEY]}
    return {name: np.zeros(shape, np.float32) for name, shape in _shapes(message).items()}


def _shapes(message: Message) -> dict[str, tuple[int, ...]]:
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
    rounds: tuple[int, ...] = (1, 2)
    """The rounds whose hostile reply is refused."""
    overrides: dict[str, Any] = field(default_factory=dict)
    bounded: str | None = None
    """The round metric that shows the reply was bounded, for accepted replies."""


CASES: dict[str, Case] = {
    "dense while compatibility is off": Case(
        lambda m, c, h: dense_weights(m, h), "dense (plain Flower) reply refused"
    ),
    "shapes that differ from the metadata": Case(
        lambda m, c, h: lying_shapes(m, h),
        "holds shape",
        overrides={"federation.plain_client_compat": True},
    ),
    "nan": Case(attacked(AttackKind.NAN), "not all finite"),
    "inf": Case(attacked(AttackKind.INF), "not all finite"),
    "replay of an old round": Case(attacked(AttackKind.STALE), "is for round 1", rounds=(2,)),
    "update against another model": Case(other_model, "computed against model abababababab"),
    "another device's task": Case(another_devices_task, "does not answer the task"),
    "truncated payload": Case(truncated, "update"),
    "oversized payload": Case(
        oversized, "exceeds the limit", overrides={"federation.max_update_bytes": 2**20}
    ),
    "zlib bomb": Case(zlib_bomb, "zlib"),
    "a million tiny tensors": Case(tiny_tensors, "tensor"),
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


def federation(case: Case) -> StamenConfig:
    return load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "preset": "edge",
            "uplink.topk_ratio": 0.1,
            "num-devices": DEVICES,
            "devices-per-round": DEVICES,
            "rounds": 2,
            "partition": "iid",
            "lr": 0.1,
            "local-epochs": 1,
            "fleet.preset": "ideal",
            **case.overrides,
        }
    )


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise LookupError(field_name)


def run(config: StamenConfig, apps: dict[int, ClientApp]) -> tuple[CollectingReporter, int]:
    """Run the federation; the records and how far the peak RSS rose above the start, in bytes."""
    grid = LocalGrid(client_app(fleet_of(config)), DEVICES, apps_by_partition=apps)
    reporter = CollectingReporter()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    start = _status_kib("VmRSS")
    server_app(config, reporter)(grid, context)
    return reporter, (_status_kib("VmHWM") - start) * 1024


@pytest.fixture(scope="module")
def honest() -> tuple[int, float]:
    """The honest federation's peak RSS growth and final accuracy."""
    config = federation(Case(send=lambda m, c, h: h, reason=None))
    reporter, peak = run(config, {})
    assert all(record.rejected == 0 for record in reporter.records)
    return peak, reporter.records[-1].accuracy


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_reply_is_refused_and_the_round_goes_on(
    name: str, honest: tuple[int, float]
) -> None:
    honest_peak, honest_accuracy = honest
    case = CASES[name]
    config = federation(case)
    reporter, peak = run(config, {HOSTILE: hostile_app(config, case.send)})
    hostile_node = HOSTILE + 1
    for record in reporter.records:
        refused = [r for r in record.rejections if r["node_id"] in (hostile_node, hostile_node + 1)]
        if case.reason is not None and record.round in case.rounds:
            assert len(refused) == 1, record.rejections
            assert case.reason.lower() in refused[0]["reason"].lower(), refused[0]["reason"]
            assert "\n" not in refused[0]["reason"]
            assert record.accepted == DEVICES - 1
        else:
            assert refused == [], refused
        if case.bounded is not None:
            assert record.extra.get(case.bounded, 0) >= 1, record.extra
        assert math.isfinite(record.loss)
    assert reporter.summary is not None
    assert "refused_models" not in reporter.summary
    assert reporter.records[-1].accuracy > honest_accuracy - 0.1
    assert peak - honest_peak < MEMORY_BOUND, f"peak RSS {peak - honest_peak} bytes above honest"
