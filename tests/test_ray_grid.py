"""Stamen's simulation grid on Ray actors (``--backend ray``): on a two-node loopback
cluster, under SIGTERM, and with an actor killed.

Every test starts real Ray processes, so all are slow: ``pytest -m slow tests/test_ray_grid.py``.
Each stops what it started, by PID, and checks that nothing of it is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from interrupts import ctrl_c_delivered

REPO_ROOT = Path(__file__).resolve().parents[1]
STAMEN = Path(sys.executable).parent / "stamen"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@pytest.mark.timeout(1200)
def test_the_grid_on_two_one_cpu_ray_nodes_ends_on_the_local_backends_model(
    tmp_path: Path,
) -> None:
    """``benchmarks/ray_cluster.py --quick``: a head and a worker node (``ray start``, one
    CPU each, on 127.0.0.1), one node then both, against the local backend."""
    benchmark = REPO_ROOT / "benchmarks" / "ray_cluster.py"
    done = subprocess.run(
        [sys.executable, str(benchmark), "--quick", "--out", str(tmp_path)],
        env={**os.environ, **QUIET_ENV},
        capture_output=True,
        text=True,
        timeout=1150,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "ray_cluster.json").read_text())
    rows = {row["path"]: row for row in result["rows"]}
    assert not any("error" in row for row in rows.values()), result.get("cluster_log_tail")
    assert rows["ray-1-node"]["workers"] == rows["ray-1-node"]["worker_nodes"] == 1
    assert rows["ray-2-nodes"]["workers"] == rows["ray-2-nodes"]["worker_nodes"] == 2
    for path in ("ray-1-node", "ray-2-nodes"):
        # The same devices in the same training groups: the very same model (the stated
        # tolerance, were it not, is 0.5 points of accuracy).
        assert rows[path]["same_model_as_local"], rows
        assert rows[path]["participants"] == rows["local"]["participants"]
    assert result["cluster_processes_left"] == 0
    assert (tmp_path / "ray_cluster.md").read_text().count("| ray-") == 2


def start_long_ray_run(out: Path) -> subprocess.Popen[str]:
    """A real ``stamen simulate --backend ray`` of 500 rounds, on a private Ray."""
    flags = ["--backend", "ray", "--dataset", "digits", "--model", "mlp"]
    flags += ["--num-devices", "10", "--devices-per-round", "5", "--rounds", "500"]
    flags += ["--partition", "iid", "--set", "federation.workers=2", "--out", str(out)]
    return subprocess.Popen(
        [str(STAMEN), "simulate", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **QUIET_ENV},
        preexec_fn=ctrl_c_delivered,
    )


def wait_for_rounds(out: Path, rounds: int, process: subprocess.Popen[str], timeout: float) -> None:
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not metrics.exists() or len(metrics.read_text().splitlines()) < rounds:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"fewer than {rounds} rounds in {timeout} s"
        time.sleep(0.2)


def actors(tree: list[psutil.Process]) -> list[psutil.Process]:
    """The run's Ray actors: Ray titles an actor's process after its class."""
    found = []
    for process in tree:
        try:
            if "DeviceActor" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("sent", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_ends_the_ray_actors_with_the_run_and_keeps_the_finished_rounds(
    tmp_path: Path, sent: signal.Signals, name: str
) -> None:
    out = tmp_path / "run"
    process = start_long_ray_run(out)
    try:
        wait_for_rounds(out, 3, process, timeout=400)
        tree = psutil.Process(process.pid).children(recursive=True)
        assert len(actors(tree)) == 2, [p.cmdline() for p in tree]
        process.send_signal(sent)
        output, _ = process.communicate(timeout=120)
        _, alive = psutil.wait_procs(tree, timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
    assert alive == [], f"still running 5 s after {name}: {[p.pid for p in alive]}"
    assert process.returncode == 128 + sent, output[-3000:]
    assert f"interrupted ({name}) after" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == name
    assert 3 <= summary["rounds"] == len((out / "metrics.jsonl").read_text().splitlines()) < 500


@pytest.mark.timeout(600)
def test_a_killed_ray_actor_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = start_long_ray_run(out)
    try:
        wait_for_rounds(out, 2, process, timeout=400)
        tree = psutil.Process(process.pid).children(recursive=True)
        actors(tree)[0].kill()
        output, _ = process.communicate(timeout=120)
        _, alive = psutil.wait_procs(tree, timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and alive == [], output[-3000:]
    assert "simulation worker" in output and "Ray actor" in output and "died" in output, output
    assert "Traceback" not in output


@pytest.mark.timeout(400)
def test_more_actors_than_the_cluster_has_cpus_fails_in_one_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from ray_cluster import LoopbackCluster

    cluster = LoopbackCluster()  # one node of one CPU, stopped by PID below
    try:
        cluster.add_node()
        flags = ["--backend", "ray", "--ray-address", cluster.address, "--workers", "2"]
        flags += ["--dataset", "digits", "--model", "mlp", "--rounds", "1"]
        deadline = time.monotonic() + 180
        while True:  # until the head answers
            done = subprocess.run(
                [str(STAMEN), "simulate", *flags, "--out", str(tmp_path / "run")],
                capture_output=True,
                text=True,
                env={**os.environ, **QUIET_ENV},
                timeout=280,
                check=False,
            )
            if "no Ray cluster answers" not in done.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        left = cluster.stop()
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(errors) == 1 and "2 Ray actors of one CPU each need 2 CPUs" in errors[0], errors
    assert "the Ray cluster has 1" in errors[0] and left == 0
