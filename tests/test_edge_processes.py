"""The edge deployment as real processes: ``stamen server`` and ``stamen agent`` on loopback.

Every test here starts real processes talking TLS over 127.0.0.1 with device
authentication on, so they are marked slow: ``pytest -m slow tests/test_edge_processes.py``.
Each process is bounded in time and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
STAMEN = str(VENV_BIN / "stamen")
ENV = {
    **os.environ,
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "COLUMNS": "200",
    "OMP_NUM_THREADS": "1",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a short ``stamen`` command to completion."""
    return subprocess.run(
        [STAMEN, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Site:
    """A throw-away deployment: certificates, a registry, logs and processes."""

    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def registry(self) -> Path:
        return self.root / "devices.json"

    def device(self, name: str, *, register: bool = True) -> Path:
        """Make a device key (and register it); returns its state dir."""
        state = self.root / "agents" / name
        done = run("agent", "keygen", "--state-dir", str(state), cwd=self.root)
        assert done.returncode == 0, done.stderr
        if register:
            done = run(
                "devices",
                "register",
                str(state / "device.pub"),
                "--name",
                name,
                "--registry",
                str(self.registry),
                cwd=self.root,
            )
            assert done.returncode == 0, done.stderr
        return state

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``stamen ARGS`` with its output in ``logs/NAME.log``."""
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as stream:
            process = subprocess.Popen(
                [STAMEN, *args],
                cwd=self.root,
                env=ENV,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def text(self, name: str) -> str:
        path = self.log(name)
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def server(self, *args: str, port: int = 0, name: str = "server") -> tuple[Any, int]:
        """Start ``stamen server`` on loopback; returns the process and its port."""
        process = self.spawn(
            name,
            "server",
            "--address",
            f"127.0.0.1:{port}",
            "--certs",
            str(self.certs),
            "--registry",
            str(self.registry),
            "--state-dir",
            str(self.root / "server-state"),
            "--out",
            str(self.root / "results"),
            *args,
        )
        found = wait_for(lambda: re.search(r"on port (\d+)", self.text(name)), 90, process)
        return process, int(found.group(1))

    def agent(self, name: str, state: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
        """Start ``stamen agent`` for the device whose state dir is ``state``."""
        return self.spawn(
            name,
            "agent",
            "--server",
            f"127.0.0.1:{port}",
            "--certs",
            str(self.certs),
            "--state-dir",
            str(state),
            "--give-up-after",
            "8",
            *args,
        )

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self.root / "results" / "summary.json").read_text())
        return summary

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(
    condition: Callable[[], Any], timeout: float, process: subprocess.Popen[bytes] | None = None
) -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` or if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            value = condition()
            if value:
                return value
            pytest.fail(f"process {process.args[:3]} exited with {process.returncode}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    deployment = Site(tmp_path)
    done = run(
        "certs",
        "init",
        str(deployment.certs),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    try:
        yield deployment
    finally:
        deployment.stop_all()


FLEET = 10
TRAINING = [
    "--dataset",
    "mnist-small",
    "--model",
    "mlp",
    "--set",
    "data.partition='iid'",
    "--set",
    "training.lr=0.1",
    "--set",
    "training.local_epochs=1",
]
"""A small MNIST federation that learns in a few rounds on two cores."""


def agent_data(pid: int, fleet: int = FLEET) -> list[str]:
    return [
        "--dataset",
        "mnist-small",
        "--partition",
        "iid",
        "--partition-id",
        str(pid),
        "--num-partitions",
        str(fleet),
    ]


def server_rounds(rounds: int, per_round: int, fleet: int = FLEET) -> list[str]:
    return [
        *TRAINING,
        "--rounds",
        str(rounds),
        "--num-devices",
        str(fleet),
        "--devices-per-round",
        str(per_round),
    ]


@pytest.mark.timeout(600)
def test_ten_agents_train_five_rounds_over_tls_like_the_simulation(site: Site) -> None:
    from stamen.config import load_config
    from stamen.simulations import simulate

    states = [site.device(f"dev{i}") for i in range(FLEET)]
    server, port = site.server(*server_rounds(5, FLEET), "--round-deadline", "120")
    for pid, state in enumerate(states):
        site.agent(f"dev{pid}", state, port, *agent_data(pid))
    assert server.wait(timeout=480) == 0, site.text("server")[-3000:]
    edge = site.summary()
    config = load_config(
        overrides={
            "data.dataset": "mnist-small",
            "training.model": "mlp",
            "data.partition": "iid",
            "training.lr": 0.1,
            "training.local_epochs": 1,
            "federation.rounds": 5,
            "federation.num_devices": FLEET,
            "federation.devices_per_round": FLEET,
        }
    )
    simulated = simulate(config)
    print(
        f"edge accuracy {edge['final_accuracy']:.4f} vs simulation "
        f"{simulated['final_accuracy']:.4f}; edge round seconds {edge['edge']['round_seconds']}"
    )
    assert edge["rounds"] == 5
    assert edge["edge"]["timed_out"] == 0 and edge["edge"]["refused_uploads"] == 0
    assert all(r["accepted"] == FLEET for r in _metrics(site))
    assert abs(edge["final_accuracy"] - simulated["final_accuracy"]) <= 0.02
    assert edge["final_accuracy"] > 0.7
    for pid in range(FLEET):
        assert (states[pid] / "state.npz").exists(), f"agent {pid} persisted no state"


def _metrics(site: Site) -> list[dict[str, Any]]:
    lines = (site.root / "results" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
