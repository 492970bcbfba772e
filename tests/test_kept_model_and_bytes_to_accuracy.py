"""A device keeps its last model across restarts; runs report the bytes each way to a target
accuracy, in summary.json and in the sweep table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Context, RecordDict
from rich.console import Console

from stamen.cli.sweep_run import sweep_table
from stamen.client.agent.state import AgentState, AgentStateStore
from stamen.client.kept_model import keep, kept_hash, kept_payload, load_kept_payload, restore_kept
from stamen.compression import DeltaPublisher, DownlinkCodecConfig, decode_model
from stamen.contract import bytes_to_accuracy
from stamen.server.federation import accuracy_bytes
from stamen.server.reporting import RoundRecord
from stamen.simulations.sweep import summarize_runs

SHAPES = {"w": (40, 10), "b": (10,)}


def context() -> Context:
    return Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})


def published_model() -> bytes:
    rng = np.random.default_rng(0)
    publisher = DeltaPublisher(DownlinkCodecConfig(deltas=True))
    model = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    publisher.publish(model, round_num=1)
    return publisher.payload_for(1)


def test_a_kept_model_survives_the_agents_state_file(tmp_path: Path) -> None:
    received = decode_model(published_model(), expected_shapes=SHAPES)
    device = context()
    keep(device, received)
    assert kept_hash(device) == received.model_hash
    store = AgentStateStore(tmp_path)
    store.save(AgentState(round=1, model=kept_payload(device)))
    restarted = context()
    restore_kept(restarted, store.load().model)
    assert kept_hash(restarted) == received.model_hash
    shapes = tuple((name, shape) for name, shape in SHAPES.items())
    again = load_kept_payload(kept_payload(restarted), shapes)
    assert again is not None
    for name, value in received.tensors.items():
        assert np.array_equal(again.tensors[name], value)


def test_a_damaged_or_foreign_kept_model_counts_as_none() -> None:
    shapes = tuple((name, shape) for name, shape in SHAPES.items())
    payload = published_model()
    assert load_kept_payload(payload[:-3], shapes) is None
    assert load_kept_payload(payload, (("w", (40, 10)),)) is None
    restarted = context()
    restore_kept(restarted, b"not a payload")
    assert kept_hash(restarted) is None


def record(round_num: int, accuracy: float, up: int, down: int) -> RoundRecord:
    return RoundRecord(
        round=round_num,
        accuracy=accuracy,
        loss=0.0,
        sampled=1,
        accepted=1,
        rejected=0,
        uplink_bytes=up,
        downlink_bytes=down,
        uplink_bytes_fp32=up,
        downlink_bytes_fp32=down,
        sparsity=0.0,
        train_loss=None,
        seconds=1.0,
    )


def test_the_summary_counts_the_bytes_sent_until_each_accuracy_was_reached() -> None:
    records = [record(1, 0.6, 100, 400), record(2, 0.85, 100, 300), record(3, 0.91, 50, 50)]
    reached = accuracy_bytes(records)
    assert reached["0.50"] == {"round": 1, "uplink_bytes": 100, "downlink_bytes": 400}
    assert reached["0.80"] == {"round": 2, "uplink_bytes": 200, "downlink_bytes": 700}
    assert reached["0.90"] == {"round": 3, "uplink_bytes": 250, "downlink_bytes": 750}
    assert "0.95" not in reached
    skipped = [dict(record(1, 0.99, 10, 10).to_dict(), evaluated=False)]
    assert bytes_to_accuracy(skipped, 0.5) is None  # a round not evaluated reaches nothing


def test_the_sweep_measures_bytes_to_95_percent_of_fp32_and_says_who_missed() -> None:
    def run(preset: str, seed: int, accuracies: list[float], kb: int) -> tuple:
        rounds = [
            {"round": i + 1, "accuracy": a, "uplink_bytes": kb * 1000, "downlink_bytes": kb * 1000}
            for i, a in enumerate(accuracies)
        ]
        summary = {
            "final_accuracy": accuracies[-1],
            "uplink_compression": 100.0 if preset == "edge" else 1.0,
            "downlink_compression": 10.0 if preset == "edge" else 1.0,
            "simulated_seconds": 1.0,
            "wall_seconds": 1.0,
        }
        return {"preset": preset, "federation.seed": seed}, summary, rounds

    rows = summarize_runs(
        [
            run("fp32", 0, [0.5, 0.9, 0.96], 100),
            run("fp32", 1, [0.5, 0.92, 0.96], 100),
            run("edge", 0, [0.3, 0.8, 0.95], 1),
            run("edge", 1, [0.3, 0.8, 0.85], 1),
        ]
    )
    fp32, edge = rows
    assert fp32.reference and not edge.reference
    assert fp32.target_accuracy == 0.95 * 0.96
    assert (fp32.reached, fp32.uplink_to_target) == (2, 250_000.0)  # rounds 3 and 2
    assert (edge.reached, edge.uplink_to_target) == (1, 3_000.0)
    console = Console(width=200, record=True)
    console.print(sweep_table(rows))
    text = console.export_text()
    assert "preset=fp32 (ref)" in text and "100.0x" in text
    assert "3.0 KB (83.3x) [1/2 seeds]" in text
    assert "91.20%" in text  # the target, in the caption
