"""Stamen on Flower's own runtimes: the Ray Simulation Engine (``--backend flower-ray``)
and ``flwr run``.

Both tests start real processes (Ray, a local SuperLink), so they are marked
slow and run with ``pytest -m slow tests/test_flower_runtimes.py``. They stay on
loopback, use a throw-away ``FLWR_HOME``, and stop every process they start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CHANCE = 0.1
"""Accuracy of guessing on digits: ten balanced classes."""

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Otherwise every run `uv sync`s pyproject's dependencies into a fresh
    # environment: that needs the network and would resolve a CUDA torch.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}

NUM_SUPERNODES = 6
RUN_CONFIG = {
    "dataset": "'digits'",
    "num-devices": str(NUM_SUPERNODES),
    "rounds": "2",
    "devices-per-round": "3",
    "preset": "'fp32'",
    "model": "'mlp'",
}
"""Overrides for ``flwr run``: the smallest federation that still learns in two rounds."""

COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".*_cache",
    ".hypothesis",
    "build",
    "dist",
    "results",
    "runs",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds the SuperLink's processes through /proc"
    ),
]


def tool(name: str) -> str:
    """A console script installed next to this interpreter."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {VENV_BIN}")
    return str(path)


def runtime_env(**extra: str) -> dict[str, str]:
    """This environment, quiet, with the venv's scripts first on PATH.

    ``flwr`` starts ``flower-superlink`` and ``flower-superexec`` by name.
    """
    env = {**os.environ, **QUIET_ENV, **extra}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def summary_of(out_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` a ServerApp wrote."""
    path = out_dir / "summary.json"
    assert path.exists(), f"no summary.json in {out_dir}: {sorted(out_dir.glob('*'))}"
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


@pytest.mark.timeout(300)
def test_stamen_simulate_runs_on_flowers_ray_engine(tmp_path: Path) -> None:
    out = tmp_path / "results"
    fleet = "--dataset digits --num-devices 6 --devices-per-round 3 --rounds 2 --partition iid"
    # The edge preset keeps QAT, pruning and the q4 uplink codec on; these make it learn
    # in two rounds.
    training = "--model mlp --lr 0.2 --local-epochs 3 --topk 0.1"
    command = [
        tool("stamen"),
        "simulate",
        "--backend",
        "flower-ray",
        *fleet.split(),
        *training.split(),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=runtime_env(),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = summary_of(out)
    assert summary["rounds"] == 2
    assert summary["config"]["federation"]["backend"] == "flower-ray"
    assert summary["final_accuracy"] > 3 * CHANCE, summary["final_accuracy"]
    assert summary["uplink_compression"] > 5, summary["uplink_compression"]
    assert len((out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@dataclass(frozen=True)
class FlowerHome:
    """A throw-away ``FLWR_HOME`` whose local SuperLink listens on ports of its own."""

    path: Path
    env: dict[str, str]

    def flwr(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this home."""
        return subprocess.run(
            [tool("flwr"), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_status(self, run_id: str, cwd: Path) -> dict[str, Any]:
        """The run as ``flwr ls --format json`` reports it (``status``: ``finished:completed``…)."""
        listed = self.flwr("ls", "local", "--run-id", run_id, "--format", "json", cwd=cwd)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        runs: list[dict[str, Any]] = json.loads(listed.stdout)["runs"]
        return runs[0]

    def superlink_log(self) -> str:
        """The tail of the local SuperLink's log, for failure messages."""
        log = self.path / "local-superlink" / "superlink.log"
        return log.read_text(encoding="utf-8")[-4000:] if log.exists() else "(no SuperLink log)"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_table() -> dict[int, tuple[int, list[str]]]:
    """``pid -> (parent pid, argv)`` for every process this user can see."""
    table: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The command name in stat may contain spaces; the parent pid follows its ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (parent, [arg.decode(errors="replace") for arg in argv if arg])
    return table


def superlink_processes(flwr_home: Path) -> list[int]:
    """The local SuperLinks started for ``flwr_home`` and all their descendants.

    ``flwr`` starts a detached ``flower-superlink`` whose log and database lie
    under ``FLWR_HOME``, so the home's unique path in its argv tells it apart
    from any other SuperLink on this machine.
    """
    table = process_table()
    roots = [
        pid
        for pid, (_, argv) in table.items()
        if any(arg.endswith("flower-superlink") for arg in argv[:2])
        and any(str(flwr_home) in arg for arg in argv)
    ]
    found, frontier = list(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def stop_processes(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM ``pids`` (parents first), then SIGKILL whatever outlives ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
            time.sleep(0.2)
        pids = [pid for pid in pids if is_alive(pid)]
        if not pids:
            return


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def flower_home(tmp_path: Path) -> Iterator[FlowerHome]:
    """A fresh ``FLWR_HOME``; its local SuperLink is stopped by PID afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    # The same connection `flwr` writes by default; ":local:" makes it start a SuperLink.
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n',
        encoding="utf-8",
    )
    ports = {
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    yield FlowerHome(home, runtime_env(FLWR_HOME=str(home), **ports))
    stop_processes(superlink_processes(home))
    assert not superlink_processes(home), "the local SuperLink outlived the test"


def copy_of_app(destination: Path) -> Path:
    """A copy of the repository to ``flwr run``.

    ``flwr run`` migrates and may rewrite an app's pyproject.toml, and its
    local SuperLink writes next to the app, so it never runs on the checkout.
    The folder is not named ``stamen``: Ray puts the working directory on its
    workers' ``sys.path``, where a ``stamen/`` folder would shadow the package.
    """
    app = destination / "stamen-app"
    shutil.copytree(REPO_ROOT, app, ignore=COPY_IGNORE)
    return app


@pytest.mark.timeout(420)
def test_flwr_run_on_a_local_simulation_superlink(tmp_path: Path, flower_home: FlowerHome) -> None:
    app = copy_of_app(tmp_path)
    declared = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    app_config = declared["tool"]["flwr"]["app"]["config"]
    out = tmp_path / "results"
    overrides = {**RUN_CONFIG, "out": f"'{out}'"}
    # Flower drops run-config overrides for keys the app does not declare, silently.
    assert set(overrides) <= set(app_config), (
        f"[tool.flwr.app.config] must declare {sorted(set(overrides) - set(app_config))}"
    )

    started = flower_home.flwr(
        "run",
        str(app),
        "local",
        "--run-config",
        " ".join(f"{key}={value}" for key, value in overrides.items()),
        "--federation-config",
        f"num-supernodes={NUM_SUPERNODES} client-resources-num-cpus=1",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["run-id"]

    # `flwr run` returns once the run is submitted (and exits 0 with --stream even
    # when it fails): the SuperLink's run status is the real outcome.
    deadline = time.monotonic() + 300
    run = flower_home.run_status(run_id, cwd=tmp_path)
    while not run["status"].startswith("finished") and time.monotonic() < deadline:
        time.sleep(2)
        run = flower_home.run_status(run_id, cwd=tmp_path)
    if run["status"] != "finished:completed":
        logs = flower_home.flwr("log", run_id, "local", "--show", cwd=tmp_path)
        pytest.fail(
            f"run {run_id} is {run['status']} ({run['status-details']})\n"
            f"{logs.stdout[-4000:]}\n{flower_home.superlink_log()}"
        )

    summary = summary_of(out)
    assert summary["rounds"] == 2
    assert summary["num_devices"] == NUM_SUPERNODES
    assert summary["config"]["data"]["dataset"] == "digits"
    assert summary["final_accuracy"] > 1.5 * CHANCE, summary["final_accuracy"]


def descendants(roots: list[int], marker: str) -> list[int]:
    """``roots``, their descendants, and any process whose argv names ``marker``."""
    table = process_table()
    found = list(roots) + [
        pid for pid, (_, argv) in table.items() if any(marker in arg for arg in argv)
    ]
    frontier = list(found)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.extend(children)
        frontier.extend(children)
    return found


@pytest.mark.timeout(420)
def test_flowers_ray_engine_joins_a_running_ray_cluster(tmp_path: Path) -> None:
    # Ray's socket paths must stay short, so its temp dir is not pytest's deep one.
    ray_dir = Path(tempfile.mkdtemp(prefix="stray", dir="/tmp"))
    port = free_port()
    head = subprocess.Popen(
        [
            tool("ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={ray_dir}",
        ],
        env=runtime_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = tmp_path / "results"
        command = [
            tool("stamen"),
            "simulate",
            "--backend",
            "flower-ray",
            "--ray-address",
            f"127.0.0.1:{port}",
            *("--dataset", "digits", "--model", "mlp", "--partition", "iid", "--preset", "fp32"),
            *("--num-devices", "6", "--devices-per-round", "3", "--rounds", "2"),
            *("--lr", "0.2", "--local-epochs", "3"),
            "--out",
            str(out),
        ]
        done = run_when_cluster_is_up(command, tmp_path, head)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = summary_of(out)
        assert summary["rounds"] == 2
        assert summary["config"]["federation"]["ray_address"] == f"127.0.0.1:{port}"
        assert summary["final_accuracy"] > 3 * CHANCE, summary["final_accuracy"]
    finally:
        stop_processes(descendants([head.pid], str(ray_dir)))
        head.wait(timeout=30)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert not descendants([], str(ray_dir)), "a Ray process of this test outlived it"


def run_when_cluster_is_up(
    command: list[str], cwd: Path, head: subprocess.Popen[str]
) -> subprocess.CompletedProcess[str]:
    """Retry ``command`` while the head node starts (bounded: about two minutes)."""
    deadline = time.monotonic() + 120
    while True:
        assert head.poll() is None, (
            f"ray start exited early:\n{head.stdout.read() if head.stdout else ''}"
        )
        done = subprocess.run(
            command, cwd=cwd, env=runtime_env(), capture_output=True, text=True, timeout=280
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        if "Could not find any running Ray instance" not in done.stdout + done.stderr:
            return done
        time.sleep(2)
