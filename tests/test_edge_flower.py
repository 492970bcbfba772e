"""The same Stamen apps on Flower's own deployment: SuperLink + SuperNodes, TLS, node auth.

This follows the recipe in docs/edge.md: a Stamen-made CA and server
certificate for ``flower-superlink``, ECDSA P-384 SuperNode keys registered
with ``flwr supernode register``, ``--enable-supernode-auth``, and ``flwr run``.
Every process is real, on loopback, and stopped by its PID (with the
``flower-superexec`` children Flower starts detached). Slow: Flower's own round
trip costs seconds per message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "build", "runs"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX process groups"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def supernode_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` makes."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


class Processes:
    """Started processes, each stopped with its whole tree by PID."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                list(argv), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.started):
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(process.pid).children(recursive=True)
                for child in [*tree, psutil.Process(process.pid)]:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                psutil.wait_procs(tree, timeout=10)
            process.wait(timeout=10)


def flwr(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "flwr"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Processes, dict[str, str]]]:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
    }
    processes = Processes(tmp_path, env)
    try:
        yield processes, env
    finally:
        processes.stop()


@pytest.mark.timeout(900)
def test_stamen_apps_on_superlink_and_supernodes_with_tls_and_node_auth(
    tmp_path: Path, deployment: tuple[Processes, dict[str, str]]
) -> None:
    processes, env = deployment
    made = subprocess.run(
        [str(VENV_BIN / "stamen"), "certs", "init", "certs", "--host", "127.0.0.1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    certs = tmp_path / "certs"
    port = free_port()
    processes.start(
        "superlink",
        str(VENV_BIN / "flower-superlink"),
        "--ssl-ca-certfile",
        str(certs / "ca.pem"),
        "--ssl-certfile",
        str(certs / "server.pem"),
        "--ssl-keyfile",
        str(certs / "server.key"),
        "--enable-supernode-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(tmp_path / "superlink.db"),
        "--disable-runtime-dependency-installation",
    )
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.pem"}"\n'
    )
    deadline = time.monotonic() + 120
    while "Application startup complete" not in processes.log("superlink"):
        assert time.monotonic() < deadline, processes.log("superlink")
        time.sleep(0.5)

    keys = [supernode_key(tmp_path, f"supernode{i}") for i in range(3)]
    for _, public in keys[:2]:  # the third key is never registered
        done = flwr(env, "supernode", "register", str(public), "edge", cwd=tmp_path)
        assert done.returncode == 0 and "registered" in done.stdout, done.stdout + done.stderr
    for i, (private, _) in enumerate(keys):
        processes.start(
            f"supernode{i}",
            str(VENV_BIN / "flower-supernode"),
            "--root-certificates",
            str(certs / "ca.pem"),
            "--superlink",
            f"127.0.0.1:{port}",
            "--auth-supernode-private-key",
            str(private),
            "--node-config",
            f"partition-id={min(i, 1)} num-partitions=2",
            "--port",
            str(free_port()),
            "--max-retries",
            "3",
        )

    app = tmp_path / "stamen-app"
    shutil.copytree(REPO_ROOT, app, ignore=COPY_IGNORE)
    out = tmp_path / "results"
    run_config = (
        "dataset='digits' num-devices=2 devices-per-round=2 rounds=2 preset='fp32' "
        f"model='mlp' lr=0.2 local-epochs=3 out='{out}'"
    )
    started = flwr(
        env, "run", str(app), "edge", "--run-config", run_config, "--format", "json", cwd=tmp_path
    )
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["run-id"]

    deadline = time.monotonic() + 700
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        listed = flwr(env, "ls", "edge", "--run-id", run_id, "--format", "json", cwd=tmp_path)
        status = json.loads(listed.stdout)["runs"][0]
        if status["status"].startswith("finished"):
            break
        time.sleep(3)
    assert status.get("status") == "finished:completed", (
        f"{status}\n{processes.log('superlink')}\n{processes.log('supernode0')}"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["final_accuracy"] > 0.3, summary["final_accuracy"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in records] == [2, 2]

    # The SuperNode with the unregistered key was refused and gave up.
    stranger = processes.started[-1]
    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in processes.log("supernode2")
    # Only the two registered SuperNodes are in the federation.
    nodes = flwr(env, "supernode", "list", "edge", "--format", "json", cwd=tmp_path)
    assert nodes.returncode == 0, nodes.stderr
    assert len(json.loads(nodes.stdout)["nodes"]) == 2, nodes.stdout
