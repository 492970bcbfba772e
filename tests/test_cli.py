"""The ``stamen`` command line as a user meets it."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stamen.cli.main import app

runner = CliRunner()


def test_help_lists_commands_and_simulate_help_explains_flags() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "simulate" in result.output
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in (
        "--preset",
        "--dataset",
        "--num-devices",
        "--devices-per-round",
        "--rounds",
        "--partition",
        "--seed",
        "--backend",
        "--out",
        "--set",
        "--config",
    ):
        assert flag in result.output
    assert "plain FedAvg baseline" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "random"], "data.partition must be one of iid, dirichlet"),
        (["--set", "uplink.topk_ratio=2"], "uplink.topk_ratio"),
        (["--config", "missing.toml"], "config file not found: missing.toml"),
        (["--set", "training.optimizer=adam"], "unknown key 'training.optimizer'"),
        (["--dataset", "npz:/no/such/file.npz"], "dataset file not found: /no/such/file.npz"),
        (["--dataset", "digits", "--num-devices", "5000"], "there are only 1437 training rows"),
        (
            ["--dataset", "watch", "--model", "lenet"],
            "holds feature vectors of shape (48,); use model mlp",
        ),
        (["--sweep", "preset"], "--sweep expects KEY=V1,V2"),
        (["--sweep", "preset=edge,tiny"], "preset must be one of edge, fp32; got 'tiny'"),
        (["--fleet", "custom"], "fleet.preset custom needs at least one [fleet.tiers.NAME]"),
        (["--deadline", "-1"], "federation.deadline must be >= 0 seconds"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_dry_run_prints_the_resolved_config_as_toml() -> None:
    result = runner.invoke(app, ["simulate", "--dry-run", "--preset", "fp32", "--rounds", "3"])
    assert result.exit_code == 0
    assert 'preset = "fp32"' in result.output
    assert "rounds = 3" in result.output


def test_simulate_runs_prints_the_table_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            "digits",
            "--num-devices",
            "8",
            "--devices-per-round",
            "4",
            "--rounds",
            "2",
            "--partition",
            "iid",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output
    assert "smaller" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["config"]["data"]["dataset"] == "digits"


def test_sweep_runs_every_combination_and_writes_one_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = "--dataset digits --model mlp --num-devices 8 --devices-per-round 4 --rounds 2"
    result = runner.invoke(
        app,
        [
            "simulate",
            *args.split(),
            "--sweep",
            "preset=edge,fp32",
            "--sweep",
            "seed=0,1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sweep run 4/4" in result.output
    lines = (out / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("setting,seeds,accuracy_mean")
    assert sorted(line.split(",")[:2] for line in lines[1:]) == [
        ["preset=edge", "2"],
        ["preset=fp32", "2"],
    ]
    assert (out / "sweep.png").stat().st_size > 0
    assert len(list(out.glob("preset=*_seed=*/summary.json"))) == 4


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_stops_cleanly_and_keeps_the_finished_rounds(tmp_path: Path) -> None:
    """A real ``stamen simulate`` process, interrupted mid-run, writes what it finished."""
    out = tmp_path / "run"
    stamen = Path(sys.executable).parent / "stamen"
    process = subprocess.Popen(
        [
            str(stamen),
            "simulate",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--num-devices",
            "10",
            "--devices-per-round",
            "5",
            "--rounds",
            "500",
            "--partition",
            "iid",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 3
        ):
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "interrupted after" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert 3 <= summary["rounds"] == len((out / "metrics.jsonl").read_text().splitlines()) < 500
