"""End-to-end federations on the in-process grid: real Flower apps, real data, real codecs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.client import client_app
from stamen.config import StamenConfig, load_config
from stamen.contract import METRICS_KEY, UPDATE_KEY
from stamen.launch import fleet_of, simulate
from stamen.models import ModelName, ModelSpec, build_model
from stamen.server import CollectingReporter, ResultsWriter, server_app
from stamen.simulations import LocalGrid


def digits_config(**overrides: object) -> StamenConfig:
    """A small, fast federation on sklearn digits: 12 devices, 6 per round."""
    base: dict[str, object] = {
        "dataset": "digits",
        "num-devices": 12,
        "devices-per-round": 6,
        "rounds": 8,
        "partition": "iid",
        "lr": 0.1,
        "local-epochs": 3,
        "model": "mlp",
    }
    base.update(overrides)
    return load_config(overrides=base)


def run_on(grid: LocalGrid, config: StamenConfig) -> CollectingReporter:
    reporter = CollectingReporter()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server_app(config, reporter)(grid, context)
    return reporter


@pytest.mark.parametrize("preset", ["edge", "fp32"])
def test_small_federation_learns_and_writes_results(preset: str, tmp_path: Path) -> None:
    # A short run needs a denser top-k than the preset's to learn within 8 rounds.
    config = digits_config(
        preset=preset, **({"uplink.topk_ratio": 0.1} if preset == "edge" else {})
    )
    summary = simulate(config, ResultsWriter(tmp_path))
    assert summary["final_accuracy"] > 0.85, summary["final_accuracy"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == list(range(1, 9))
    written = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "final_accuracy",
        "rounds",
        "num_devices",
        "devices_per_round",
        "uplink_bytes",
        "downlink_bytes",
        "uplink_bytes_fp32",
        "downlink_bytes_fp32",
        "wall_seconds",
        "config",
    ):
        assert key in written
    assert written["config"]["preset"] == preset
    assert (tmp_path / "rounds.png").stat().st_size > 10_000
    if preset == "edge":
        assert written["uplink_bytes_fp32"] / written["uplink_bytes"] > 10
        assert written["downlink_bytes_fp32"] / written["downlink_bytes"] > 3
        assert written["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    else:
        assert written["uplink_bytes"] == pytest.approx(written["uplink_bytes_fp32"], rel=0.02)


def test_same_seed_gives_the_same_model() -> None:
    config = digits_config(rounds=2)
    first, second = simulate(config), simulate(config)
    assert first["final_model_sha256"] == second["final_model_sha256"]
    other = simulate(digits_config(rounds=2, seed=1))
    assert other["final_model_sha256"] != first["final_model_sha256"]


def plain_flower_client(config: StamenConfig) -> ClientApp:
    """A stock Flower ClientApp: dense ArrayRecord in, dense ArrayRecord out, no Stamen codec."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        from stamen.client.local_data import device_data

        local = device_data(fleet_of(config), int(context.node_config["partition-id"]))
        model = build_model(ModelSpec(ModelName.MLP, local.input_shape, local.num_classes))
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(local.x), local.y).backward()
            optimizer.step()
        reply = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(local.y)}),
            }
        )
        return Message(reply, reply_to=message)

    return app


def test_plain_flower_client_takes_part_and_is_aggregated() -> None:
    config = digits_config(
        preset="fp32",
        rounds=2,
        **{"federation.plain_client_compat": True, "num-devices": 4, "devices-per-round": 4},
    )
    grid = LocalGrid(
        client_app(fleet_of(config)), 4, apps_by_partition={0: plain_flower_client(config)}
    )
    reporter = run_on(grid, config)
    assert all(r.accepted == 4 and r.rejected == 0 for r in reporter.records)
    assert all(r.plain_clients == 1 for r in reporter.records)
    assert reporter.records[-1].accuracy > 0.3


def hostile_client(kind: str) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if kind == "crash":
            raise RuntimeError("battery died")
        payload = np.frombuffer(b"\x08\x01garbage-bytes" * 50, dtype=np.uint8)
        content = RecordDict(
            {
                UPDATE_KEY: ArrayRecord({"payload": Array(payload)}),
                METRICS_KEY: MetricRecord({"num-examples": 10}),
            }
        )
        if kind == "nan":
            weights = message.content.array_records["arrays"]
            nan = {k: Array(np.full_like(v.numpy(), np.nan)) for k, v in weights.items()}
            content = RecordDict(
                {"arrays": ArrayRecord(nan), METRICS_KEY: MetricRecord({"num-examples": 10})}
            )
        return Message(content, reply_to=message)

    return app


@pytest.mark.parametrize(
    ("kind", "reason"), [("garbage", "does not parse"), ("nan", "NaN"), ("crash", "battery died")]
)
def test_bad_updates_are_rejected_with_a_reason_and_the_round_goes_on(
    kind: str, reason: str
) -> None:
    config = digits_config(
        rounds=2,
        **{"num-devices": 4, "devices-per-round": 4, "federation.plain_client_compat": True},
    )
    grid = LocalGrid(client_app(fleet_of(config)), 4, apps_by_partition={1: hostile_client(kind)})
    reporter = run_on(grid, config)
    for record in reporter.records:
        assert record.accepted == 3 and record.rejected == 1
        assert record.rejections[0]["node_id"] == 2
        assert reason.lower() in record.rejections[0]["reason"].lower()
        assert math.isfinite(record.loss)
    assert reporter.records[-1].accuracy > 0.3
