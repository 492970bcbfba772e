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
    from stamen.launch import simulate

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


@pytest.mark.timeout(300)
def test_unregistered_and_revoked_devices_are_refused_without_touching_the_round(
    site: Site,
) -> None:
    good = site.device("good")
    stranger = site.device("stranger", register=False)
    revoked = site.device("revoked")
    done = run("devices", "revoke", "revoked", "--registry", str(site.registry), cwd=site.root)
    assert done.returncode == 0, done.stderr
    listing = run("devices", "list", "--registry", str(site.registry), cwd=site.root).stdout
    assert "revoked" in listing and "good" in listing and "stranger" not in listing

    server, port = site.server(*digits_server(2, 1, 1), "--round-deadline", "60")
    refused = site.agent("stranger", stranger, port, *digits_agent(0, 1))
    banned = site.agent("revoked", revoked, port, *digits_agent(0, 1))
    assert refused.wait(timeout=120) == 2
    assert banned.wait(timeout=120) == 2
    assert "is not registered on this server" in site.text("stranger")
    assert "was revoked on this server" in site.text("revoked")
    assert "Traceback" not in site.text("stranger") + site.text("revoked")

    site.agent("good", good, port, *digits_agent(0, 1))
    assert server.wait(timeout=240) == 0, site.text("server")[-3000:]
    assert [(r["sampled"], r["accepted"], r["rejected"]) for r in _metrics(site)] == [(1, 1, 0)] * 2


@pytest.mark.timeout(300)
def test_an_agent_killed_mid_round_leaves_the_round_to_finish_at_its_deadline(
    site: Site, tmp_path: Path
) -> None:
    import numpy as np

    # The victim holds a large (random) partition, so its local training takes
    # long enough to be killed in the middle of it.
    rng = np.random.default_rng(0)
    big = tmp_path / "big.npz"
    labels = np.arange(200_000) % 10
    np.savez(
        big,
        x_train=rng.random((200_000, 64), dtype=np.float32),
        y_train=labels,
        x_test=rng.random((100, 64), dtype=np.float32),
        y_test=labels[:100],
    )
    states = [site.device(f"dev{i}") for i in range(3)]
    deadline = 15
    server, port = site.server(*digits_server(2, 3, 3), "--round-deadline", str(deadline))
    for pid in range(2):
        site.agent(f"dev{pid}", states[pid], port, *digits_agent(pid, 3))
    victim = site.agent("victim", states[2], port, "--dataset", f"npz:{big}", "-v")
    wait_for(lambda: "round 1: train" in site.text("victim"), 120, victim)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]

    summary = site.summary()
    first = summary["edge"]["rounds"][0]
    assert first["timed_out"] == 1 and first["replies"] == 2
    assert first["seconds"] >= deadline - 1  # it waited for the deadline, not forever
    records = _metrics(site)
    assert records[0]["accepted"] == 2 and records[0]["sampled"] == 3
    assert records[1]["sampled"] == 2 and records[1]["accepted"] == 2  # the dead one is gone
    assert "missed the deadline" in site.text("server")


@pytest.mark.timeout(400)
def test_a_restarted_server_resumes_after_the_last_finished_round(site: Site) -> None:
    states = [site.device(f"dev{i}") for i in range(3)]
    args = [*digits_server(6, 3, 3), "--round-deadline", "60", "--set", "training.local_epochs=3"]
    server, port = site.server(*args)
    agents = [
        site.agent(f"dev{pid}", state, port, *digits_agent(pid, 3), "--give-up-after", "120")
        for pid, state in enumerate(states)
    ]
    metrics = site.root / "results" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 200, server)
    finished = len(metrics.read_text().splitlines())
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    assert finished < 6, "the run ended before the server could be killed"

    restarted, again = site.server(*args, port=port, name="server-2")
    assert again == port
    assert restarted.wait(timeout=300) == 0, site.text("server-2")[-3000:]
    log = site.text("server-2")
    resumed = int(re.search(r"resuming from the checkpoint of round (\d+)", log).group(1))
    assert resumed >= finished  # no finished round was lost
    records = _metrics(site)
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert site.summary()["rounds"] == 6
    assert all(r["accepted"] == 3 for r in records[resumed:])  # the agents came back
    assert all(agent.poll() is None or agent.returncode == 0 for agent in agents)
    assert all("reconnecting" in site.text(f"dev{pid}") for pid in range(3))


@pytest.mark.timeout(300)
def test_oversized_and_corrupt_uploads_are_refused_and_the_server_keeps_serving(
    site: Site,
) -> None:
    import threading

    import grpc

    from stamen.client.agent import EdgeConnection, EdgeProtocolError, open_channel
    from stamen.client.agent.state import AgentStateStore
    from stamen.client.agent.wire import edge_error_of
    from stamen.protos.edge.v1 import edge_pb2

    states = [site.device(f"dev{i}") for i in range(3)]
    server, port = site.server(
        *digits_server(2, 3, 3), "--round-deadline", "15", "--max-payload-mb", "1"
    )
    for pid in range(2):
        site.agent(f"dev{pid}", states[pid], port, *digits_agent(pid, 3))

    # The third device is a hostile client in this process: a registered key
    # that answers its task with bad uploads.
    hostile = EdgeConnection(
        open_channel(f"127.0.0.1:{port}", site.certs / "ca.pem"),
        AgentStateStore(states[2]).load_key(),
    )
    session = hostile.join()
    tasks: list[edge_pb2.Task] = []

    def receive() -> None:
        with contextlib.suppress(grpc.RpcError, EdgeProtocolError):
            tasks.extend(hostile.tasks(session))

    threading.Thread(target=receive, daemon=True).start()
    wait_for(lambda: tasks, 120, server)
    task_id = tasks[0].task_id

    refusals = []
    for data, declared in [
        (b"x" * 10, 64 * 2**20),  # declares more than the limit
        (b"not a record" * 100, None),  # parses as nothing Flower knows
    ]:
        header = edge_pb2.UploadHeader(
            session=session.token,
            task_id=task_id,
            total_bytes=declared or len(data),
            sha256=bytes(32),  # a wrong checksum too
        )
        with pytest.raises(grpc.RpcError) as refused:
            hostile.stub.Upload(iter([edge_pb2.UploadChunk(header=header, data=data)]))
        typed = edge_error_of(refused.value)
        assert typed is not None, refused.value
        refusals.append(typed)
    assert [e.code_name for e in refusals] == [
        "ERROR_CODE_PAYLOAD_TOO_LARGE",
        "ERROR_CODE_CORRUPT_UPLOAD",
    ]
    assert "exceeds the server's limit" in str(refusals[0])
    hostile.close()

    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]
    summary = site.summary()
    assert summary["rounds"] == 2
    assert summary["edge"]["refused_uploads"] == 2
    assert _metrics(site)[0]["accepted"] == 2
    assert _metrics(site)[1]["accepted"] == 2


@pytest.mark.timeout(300)
def test_a_real_agent_refuses_a_tampered_model(site: Site) -> None:
    """An edge server that flips one bit of the model after signing it, and a real agent."""
    from flwr.app import ConfigRecord

    from stamen.config import load_config
    from stamen.data import load_dataset
    from stamen.models import build_model, exchanged_state
    from stamen.server.edge import EdgeServer, EdgeServerSettings
    from stamen.server.federation import build_strategy, model_spec
    from stamen.transport.deltas import to_array_record

    state = site.device("dev0")
    server = EdgeServer(
        EdgeServerSettings(
            address="127.0.0.1:0",
            certs_dir=site.certs,
            registry=site.registry,
            round_deadline=120,
        )
    )
    port = server.start()
    try:
        agent = site.agent("dev0", state, port, *digits_agent(0, 1))
        wait_for(lambda: list(server.grid.get_node_ids()), 120, agent)
        config = load_config(
            overrides={
                "dataset": "digits",
                "model": "mlp",
                "num-devices": 1,
                "devices-per-round": 1,
            }
        )
        spec = model_spec(config, load_dataset("digits"))
        strategy = build_strategy(config, spec)
        arrays = to_array_record(exchanged_state(build_model(spec, seed=0)))
        grid = server.grid
        sound_seal = grid._seal

        def tampering_seal(message, task_id, deadline):  # type: ignore[no-untyped-def]
            task = sound_seal(message, task_id, deadline)
            content = bytearray(task.content)
            content[len(content) // 2] ^= 0x01  # one bit of the model, after signing
            task.content = bytes(content)
            return task

        grid._seal = tampering_seal  # type: ignore[method-assign]
        (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        assert reply.has_error()
        assert "signature or hash does not verify" in reply.error.reason
        assert "refused the task" in site.text("dev0")
        assert not (state / "state.npz").exists()  # the agent loaded nothing

        grid._seal = sound_seal  # type: ignore[method-assign]
        (reply,) = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        assert not reply.has_error()
        assert strategy.aggregate_train(1, [reply])[0] is not None
        assert (state / "state.npz").exists()
    finally:
        server.stop()
