"""The harness of the edge process tests: a throw-away deployment of real ``stamen`` processes.

``test_edge_processes.py`` (a federation's lifecycle), ``test_edge_processes_agents.py``
(how agents come and go: the run's end, revocation, FedBuff on two speeds) and
``test_edge_processes_security.py`` (who and what the server refuses) share it.
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


@contextlib.contextmanager
def deployment(tmp_path: Path) -> Iterator[Site]:
    """Certificates for 127.0.0.1 in ``tmp_path``; every process started is killed at the end."""
    site = Site(tmp_path)
    done = run(
        "certs",
        "init",
        str(site.certs),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    try:
        yield site
    finally:
        site.stop_all()


def metrics(site: Site) -> list[dict[str, Any]]:
    lines = (site.root / "results" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


DIGITS = ["--dataset", "digits", "--model", "mlp", "--set", "data.partition='iid'"]


def digits_agent(pid: int, fleet: int) -> list[str]:
    return [
        "--dataset",
        "digits",
        "--partition",
        "iid",
        "--partition-id",
        str(pid),
        "--num-partitions",
        str(fleet),
    ]


def digits_server(rounds: int, per_round: int, fleet: int) -> list[str]:
    return [
        *DIGITS,
        "--rounds",
        str(rounds),
        "--num-devices",
        str(fleet),
        "--devices-per-round",
        str(per_round),
    ]


def big_npz(root: Path, rows: int = 200_000) -> Path:
    """A large random data set (``npz:`` for ``--dataset``): a device holding it trains
    for many seconds per round, so that something can happen to it mid-training."""
    import numpy as np

    path = root / f"big-{rows}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    labels = np.arange(rows) % 10
    np.savez(
        path,
        x_train=rng.random((rows, 64), dtype=np.float32),
        y_train=labels,
        x_test=rng.random((100, 64), dtype=np.float32),
        y_test=labels[:100],
    )
    return path


def a_round_with_a_slow_device(
    site: Site, tmp_path: Path, deadline: float
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Two rounds of three devices with ``deadline``: two quick agents on digits, and
    ``dev2`` on a large data set. Returns the server and ``dev2`` once it is training
    round 1, so that something can happen to it mid-round."""
    states = [site.device(f"dev{i}") for i in range(3)]
    server, port = site.server(*digits_server(2, 3, 3), "--deadline", str(deadline))
    for pid in range(2):
        site.agent(f"dev{pid}", states[pid], port, *digits_agent(pid, 3))
    slow = site.agent("dev2", states[2], port, "--dataset", f"npz:{big_npz(tmp_path)}", "-v")
    wait_for(lambda: "round 1: train" in site.text("dev2"), 120, slow)
    return server, slow
