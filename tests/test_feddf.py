"""FedDF and tier students in real, small federations on digits (real Flower apps and codecs)."""

import json
from pathlib import Path

import numpy as np
import pytest

from stamen.client import FleetData, client_app
from stamen.compression import DistillConfig, DownlinkCodecConfig, UplinkCodecConfig
from stamen.config import DataSettings, load_config
from stamen.contract import TrainTask
from stamen.core.errors import DataError
from stamen.core.fleet import TieredGrid
from stamen.data import PartitionScheme, file_inputs, holdout_inputs, load_dataset
from stamen.launch import simulate
from stamen.models import ModelSpec, build_model, exchanged_state, load_model_file
from stamen.server import ResultsWriter
from stamen.simulations import LocalGrid
from stamen.strategies import FedDF, TierStudent
from stamen.transport import to_array_record


def test_feddf_with_students_reports_per_tier_metrics_models_and_edge(tmp_path: Path) -> None:
    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "num-devices": 12,
            "devices-per-round": 6,
            "rounds": 3,
            "partition": "iid",
            "lr": 0.1,
            "local-epochs": 3,
            "uplink.topk_ratio": 0.1,
            "fleet.preset": "mixed",
            "federation.workers": 1,
            "distill.enabled": True,
            "distill.students": "mcu=0.25:4,iot=0.5",
            "distill.steps": 20,
            "distill.holdout_size": 300,
            "distill.edge_metrics": True,
        }
    )
    summary = simulate(config, ResultsWriter(tmp_path))
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 3
    last = rounds[-1]
    for key in ("accuracy_before_distill", "ensemble_size", "mcu_accuracy", "iot_accuracy"):
        assert key in last, key
    assert last["mcu_params"] < last["iot_params"] < summary["model_parameters"]
    assert sum(r["mcu_updates"] + r["iot_updates"] for r in rounds) > 0
    assert summary["rejected_updates"] == 0
    assert summary["final_accuracy"] > 0.5
    assert last["mcu_accuracy"] > 0.3  # ten classes: chance is 0.1
    edge = summary["edge"]
    assert set(edge) == {"global", "mcu", "iot"}
    for metrics in edge.values():
        assert metrics["artifact_bytes"] < metrics["fp32_onnx_bytes"]
        assert abs(metrics["artifact_accuracy"] - metrics["fake_quant_accuracy"]) < 0.03
        assert metrics["latency_ms_p50"] > 0 and metrics["peak_memory_bytes"] > 0
    mcu = load_model_file(tmp_path / "model-mcu.pt")
    assert mcu.tier == "mcu" and mcu.weight_bits == 4 and mcu.spec.width == 0.25
    assert load_model_file(tmp_path / "model.pt").tier is None


def test_feddf_uses_a_plain_tier_mapping_on_a_grid_without_tiers() -> None:
    fleet = FleetData(DataSettings(dataset="digits", partition=PartitionScheme.IID), 8, seed=0)
    grid = LocalGrid(client_app(fleet), num_nodes=8)
    assert not isinstance(grid, TieredGrid)
    data = load_dataset("digits")
    spec = ModelSpec("mlp", data.input_shape, data.num_classes)
    student = ModelSpec("mlp", data.input_shape, data.num_classes, width=0.25)
    strategy = FedDF(
        teacher_spec=spec,
        unlabelled=holdout_inputs(data, 200, seed=0),
        distill_config=DistillConfig(steps=10),
        students={"mcu": TierStudent(student)},
        tier_of=lambda node: "mcu" if node % 2 else None,
        model_factory=lambda: build_model(spec),
        task=TrainTask(model=spec.name, lr=0.1, uplink=UplinkCodecConfig(topk_ratio=0.2)),
        downlink=DownlinkCodecConfig(values="q8"),
        devices_per_round=8,
    )
    initial_student = {k: v.copy() for k, v in strategy.student_states["mcu"].items()}
    strategy.start(
        grid=grid,
        initial_arrays=to_array_record(exchanged_state(build_model(spec, seed=0))),
        num_rounds=2,
    )
    for server_round in (1, 2):
        stats = strategy.stats[server_round]
        assert stats.rejections == []
        assert stats.accepted == 8
        assert stats.extra["mcu_updates"] == 4
        assert stats.extra["ensemble_size"] == 8
    changed = any(
        not np.array_equal(initial_student[k], v) for k, v in strategy.student_states["mcu"].items()
    )
    assert changed


def test_unlabelled_file_inputs_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "x.npz"
    np.savez(good, x=np.zeros((5, 8, 8), np.float32))
    assert file_inputs(good, (1, 8, 8)).shape == (5, 1, 8, 8)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 7, 7), np.float32))
    with pytest.raises(DataError, match="expected \\(N, 1, 8, 8\\)"):
        file_inputs(tmp_path / "wrong.npz", (1, 8, 8))
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    with pytest.raises(DataError, match="has no array 'x'"):
        file_inputs(tmp_path / "nox.npz", (1, 8, 8))
    with pytest.raises(DataError, match="not found"):
        file_inputs(tmp_path / "missing.npz", (1, 8, 8))
    x = holdout_inputs(load_dataset("digits"), 50, seed=1)
    assert x.shape == (50, 1, 8, 8) and x.flags.writeable


def test_distillation_refuses_another_strategy() -> None:
    from stamen.core.errors import ConfigError
    from stamen.server.distillation import build_feddf
    from stamen.server.federation import model_spec

    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "distill.enabled": True,
            "strategy.name": "fedprox",
        }
    )
    data = load_dataset("digits")
    with pytest.raises(ConfigError, match=r"strategy\.name must be fedavg, got 'fedprox'"):
        build_feddf(config, model_spec(config, data), data)
