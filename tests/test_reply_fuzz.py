"""Generated whole replies through the real strategy: none may abort a round or poison the model.

Each example is a full Flower ``Message``: its records (encoded payloads mutated
from an honest one, dense arrays of any shape and dtype, metadata that lies
about shapes, metrics of any type and value), and its metadata (which device
it claims to come from, which task it answers). It joins five honest replies
in one round of the real strategy on the in-process simulation grid. Every
round must finish, accept the honest devices, refuse or bound the generated
reply with a one-line reason, and leave a finite model.

``STAMEN_FUZZ_EXAMPLES`` sets the count (300 by default; the acceptance run uses
10,000), and ``STAMEN_FUZZ_REPORT=PATH`` writes the count and the peak memory
growth to a JSON file (``benchmarks/results/reply_fuzz.json``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.client import client_app
from stamen.config import load_config
from stamen.contract import DENSE_KEY, METRICS_KEY, PAYLOAD, UPDATE_KEY, payload_bytes
from stamen.data import load_dataset
from stamen.launch import fleet_of
from stamen.models import build_model, exchanged_state
from stamen.server.federation import build_strategy, model_spec
from stamen.simulations import LocalGrid
from stamen.transport import RoundStats, to_array_record

EXAMPLES = int(os.environ.get("STAMEN_FUZZ_EXAMPLES", "300"))
HONEST = 5
MEMORY_BOUND = 64 * 2**20 + 16 * 2**10 * EXAMPLES
"""Peak RSS growth allowed: 64 MiB, plus 16 KiB an example for hypothesis's own record of
every example it generated (tracemalloc after 600 examples: 13.6 MB retained by hypothesis,
0.65 MB by Stamen's code)."""


class Round:
    """One sent round of the real strategy, and its honest replies, to replay replies into."""

    def __init__(self) -> None:
        config = load_config(
            overrides={
                "dataset": "digits",
                "model": "mlp",
                "preset": "edge",
                "num-devices": HONEST + 1,
                "devices-per-round": HONEST + 1,
                "partition": "iid",
                "fleet.preset": "ideal",
                "federation.plain_client_compat": True,
            }
        )
        spec = model_spec(config, load_dataset(config.data.dataset))
        self.strategy = build_strategy(config, spec)
        grid = LocalGrid(client_app(fleet_of(config)), HONEST + 1)
        model = exchanged_state(build_model(spec, seed=0))
        self.model = model
        self.tasks = list(
            self.strategy.configure_train(1, to_array_record(model), ConfigRecord(), grid)
        )
        replies = list(grid.send_and_receive(self.tasks))
        self.honest = [r for r in replies if r.metadata.src_node_id != self.fuzzed_node]
        mine = next(r for r in replies if r.metadata.src_node_id == self.fuzzed_node)
        self.honest_payload = payload_bytes(mine.content.array_records[UPDATE_KEY][PAYLOAD])

    fuzzed_node = 1

    def task(self, node: int) -> Message:
        return next(t for t in self.tasks if t.metadata.dst_node_id == node)

    def play(self, reply: Message) -> tuple[Any, RoundStats]:
        self.strategy.stats[1] = RoundStats(1)
        arrays, _ = self.strategy.aggregate_train(1, [*self.honest, reply])
        return arrays, self.strategy.stats[1]


@pytest.fixture(scope="module")
def sent_round() -> Round:
    return Round()


def _mutated(payload: bytes, data: st.DataObject) -> bytes:
    edit = data.draw(st.sampled_from(["none", "flip", "cut", "splice", "random", "repeat"]))
    raw = bytearray(payload)
    if edit == "none":
        pass
    elif edit == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif edit == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif edit == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(max_size=64))
    elif edit == "repeat":
        raw = raw * data.draw(st.integers(2, 20))
    else:
        raw = bytearray(data.draw(st.binary(max_size=4096)))
    return bytes(raw)


_DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool", "complex64"]


def _array(data: st.DataObject, shape_hint: tuple[int, ...] | None) -> Array:
    dtype = data.draw(st.sampled_from(_DTYPES))
    if shape_hint is not None and data.draw(st.booleans()):
        shape = shape_hint
    else:
        shape = tuple(data.draw(st.lists(st.integers(0, 6), max_size=3)))
    fill = data.draw(st.sampled_from([0.0, 1.0, -3e38, 1e30, np.nan, np.inf]))
    with np.errstate(all="ignore"):
        value = np.full(shape, fill).astype(dtype)
    array = Array(value)
    if data.draw(st.integers(0, 3)) == 0:  # metadata that lies about the bytes
        declared = tuple(data.draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=3)))
        dtype_name = data.draw(st.sampled_from(_DTYPES))
        array = Array(dtype=dtype_name, shape=declared, stype=array.stype, data=array.data)
    return array


def _metrics(data: st.DataObject) -> MetricRecord:
    count = data.draw(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([1, 10, 10**8, 10**9, 10**9 + 1]),
        )
    )
    record: dict[str, Any] = {}
    if data.draw(st.integers(0, 9)) > 0:
        record["num-examples"] = count
    if data.draw(st.booleans()):
        record["train-loss"] = data.draw(st.floats(allow_nan=True, allow_infinity=True))
    return MetricRecord(record)


def generated_reply(sent: Round, data: st.DataObject) -> Message:
    node = data.draw(st.sampled_from([sent.fuzzed_node, sent.fuzzed_node, 2, 999]))
    task = sent.task(sent.fuzzed_node if node == 999 else node)
    if data.draw(st.integers(0, 9)) == 0:
        reply = Message(Error(code=data.draw(st.integers(0, 99)), reason="x" * 5000), reply_to=task)
    else:
        records: dict[str, Any] = {}
        kinds = data.draw(st.sets(st.sampled_from(["update", "dense", "metrics", "junk"])))
        if "update" in kinds:
            payload = _mutated(sent.honest_payload, data)
            records[UPDATE_KEY] = ArrayRecord(
                {
                    data.draw(st.sampled_from([PAYLOAD, "other"])): Array(
                        np.frombuffer(payload, np.uint8)
                    )
                }
            )
        if "dense" in kinds:
            names = data.draw(st.sets(st.sampled_from([*sent.model, "extra"]), max_size=8))
            records[DENSE_KEY] = ArrayRecord(
                {
                    name: _array(data, sent.model[name].shape if name in sent.model else None)
                    for name in names
                }
            )
        if "metrics" in kinds or data.draw(st.booleans()):
            records[METRICS_KEY] = _metrics(data)
        if "junk" in kinds:
            records["junk"] = ConfigRecord({"x": data.draw(st.text(max_size=20))})
        reply = Message(RecordDict(records), reply_to=task)
    if node == 999:
        reply.metadata.__dict__["_src_node_id"] = 999
    if data.draw(st.integers(0, 5)) == 0:
        reply.metadata.__dict__["_reply_to_message_id"] = data.draw(st.text(max_size=40))
    return reply


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def test_no_generated_reply_aborts_a_round_or_poisons_the_model(sent_round: Round) -> None:
    outcomes: dict[str, int] = {"accepted": 0, "rejected": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(st.data())
    def one_round(data: st.DataObject) -> None:
        arrays, stats = sent_round.play(generated_reply(sent_round, data))
        assert arrays is not None, stats.rejections
        for name in arrays:
            assert np.isfinite(arrays[name].numpy()).all()
        honest_nodes = {r.metadata.src_node_id for r in sent_round.honest}
        assert stats.accepted >= len(honest_nodes) - 1  # the direction check may drop one
        for rejection in stats.rejections:
            assert rejection.reason and "\n" not in rejection.reason
        assert stats.uplink_bytes >= 0 and math.isfinite(stats.uplink_bytes)
        outcomes["accepted" if stats.accepted > len(honest_nodes) else "rejected"] += 1

    Path("/proc/self/clear_refs").write_text("5")
    start_kib, started = _rss_kib("VmRSS"), time.perf_counter()
    one_round()
    growth = (_rss_kib("VmHWM") - start_kib) * 1024
    if report := os.environ.get("STAMEN_FUZZ_REPORT"):
        Path(report).write_text(
            json.dumps(
                {
                    "examples": EXAMPLES,
                    "replies_let_in": outcomes["accepted"],
                    "replies_refused": outcomes["rejected"],
                    "peak_rss_growth_bytes": growth,
                    "seconds": round(time.perf_counter() - started, 1),
                    "command": "STAMEN_FUZZ_EXAMPLES=10000 STAMEN_FUZZ_REPORT="
                    "benchmarks/results/reply_fuzz.json .venv/bin/pytest -q "
                    "tests/test_reply_fuzz.py",
                },
                indent=2,
            )
            + "\n"
        )
    assert sum(outcomes.values()) == EXAMPLES
    assert growth < MEMORY_BOUND, f"peak RSS grew {growth} bytes"
