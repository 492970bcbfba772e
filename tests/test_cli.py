"""The ``stamen`` command line as a user meets it."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from interrupts import ctrl_c_delivered
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
        (["--sweep", "preset=edge,tiny"], "fp32, private-edge; got 'tiny'"),
        (["--fleet", "custom"], "fleet.preset custom needs at least one [fleet.tiers.NAME]"),
        (["--deadline", "-1"], "federation.deadline must be >= 0 seconds"),
        (["--backend", "ray", "--ray-address", "10.0.0.1"], "federation.ray_address must be"),
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


def start_long_run(out: Path, workers: int = 2) -> subprocess.Popen[str]:
    """A real ``stamen simulate`` of 500 rounds, with ``workers`` worker processes."""
    stamen = Path(sys.executable).parent / "stamen"
    flags = ["--dataset", "digits", "--model", "mlp", "--num-devices", "10"]
    flags += ["--devices-per-round", "5", "--rounds", "500", "--partition", "iid"]
    flags += ["--set", f"federation.workers={workers}", "--out", str(out)]
    return subprocess.Popen(
        [str(stamen), "simulate", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ctrl_c_delivered,
    )


def wait_for_rounds(out: Path, rounds: int, timeout: float = 120) -> None:
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < rounds
    ):
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("sent", "name"), [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_cleanly_and_keeps_the_finished_rounds(
    tmp_path: Path, sent: signal.Signals, name: str
) -> None:
    """A real ``stamen simulate``, interrupted mid-run (by Ctrl-C, or by SIGTERM as job
    schedulers and ``timeout`` send it), writes what it finished and leaves no worker."""
    out = tmp_path / "run"
    process = start_long_run(out)
    try:
        wait_for_rounds(out, 3)
        tree = psutil.Process(process.pid).children(recursive=True)
        assert len(tree) >= 2  # the workers
        process.send_signal(sent)
        output, _ = process.communicate(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
    assert alive == [], f"still running 5 s after {name}: {alive}"
    assert process.returncode == 128 + sent, output
    assert f"interrupted ({name}) after" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == name
    assert 3 <= summary["rounds"] == len((out / "metrics.jsonl").read_text().splitlines()) < 500


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_ray_address_with_no_cluster_fails_in_one_line_within_seconds() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    stamen = Path(sys.executable).parent / "stamen"
    started = time.monotonic()
    result = subprocess.run(
        [str(stamen), "simulate", "--backend", "ray", "--ray-address", address, "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"no Ray cluster answers at {address}" in errors[0], errors


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_worker_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = start_long_run(out)
    try:
        wait_for_rounds(out, 2)
        workers = psutil.Process(process.pid).children(recursive=True)
        workers[0].kill()
        output, _ = process.communicate(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and alive == []
    assert "simulation worker" in output and "died" in output, output
    assert "Traceback" not in output
