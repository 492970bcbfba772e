"""Flower's deployment runtime for ``edge_overhead.py``: a SuperLink, N SuperNodes, bounded runs.

:class:`FlowerSite` starts ``flower-superlink`` (TLS, SuperNode authentication)
and ``--agents`` ``flower-supernode`` processes, each with its own registered
ECDSA key, and runs apps on them with ``flwr run``: the Stamen apps, then a
trivial app (``flower_trivial_app/``) whose ClientApp does nothing, on the same
SuperNodes. A run is bounded: it is stopped (``flwr stop``) when a round takes
longer than ``round_limit`` seconds, or when the machine's available memory falls
below ``min_available`` bytes, and the result says what was cut.

:func:`import_seconds` times the process start a ClientApp pays on Flower's
runtime, apart from the rest: ``count`` Python processes that import a module,
started at once, until the last one exits.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

BIN = Path(sys.executable).parent


def kill_tree(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill the processes we started and their children, by PID."""
    for process in processes:
        try:
            tree = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.kill()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def import_seconds(module: str, count: int, env: dict[str, str]) -> float:
    """Wall seconds for ``count`` processes importing ``module``, started at once."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen([sys.executable, "-c", f"import {module}"], env=env) for _ in range(count)
    ]
    for process in processes:
        process.wait(timeout=1800)
    return time.perf_counter() - started


class FlowerSite:
    """A SuperLink and ``agents`` SuperNodes over TLS on loopback, in ``out``."""

    def __init__(self, out: Path, agents: int, env: dict[str, str], port: int) -> None:
        self.out, self.agents, self.port = out, agents, port
        self.home = out / "flwr-home"
        self.env = {**env, "FLWR_HOME": str(self.home)}
        self.certs = out / "certs"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, free_port: Callable[[], int]) -> None:
        """Certificates, the SuperLink, a registered key and a SuperNode per device."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._run([str(BIN / "stamen"), "certs", "init", "certs", "--host", "127.0.0.1", "--force"])
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.pem"}"\n'
        )
        (self.out / "superlink.db").unlink(missing_ok=True)
        self._spawn(
            "superlink",
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(self.certs / "ca.pem"),
            "--ssl-certfile",
            str(self.certs / "server.pem"),
            "--ssl-keyfile",
            str(self.certs / "server.key"),
            "--enable-supernode-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.out / "superlink.db"),
            "--disable-runtime-dependency-installation",
        )
        log = self.out / "superlink.log"
        while "Application startup complete" not in log.read_text(errors="replace"):
            if self.processes[0].poll() is not None:
                raise SystemExit(f"flower-superlink exited; see {log}")
            time.sleep(0.5)
        for i in range(self.agents):
            key = ec.generate_private_key(ec.SECP384R1())
            private, public = self.out / f"sn{i}.key", self.out / f"sn{i}.pub"
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
            self._run([str(BIN / "flwr"), "supernode", "register", str(public), "bench"])
            self._spawn(
                f"sn{i}",
                str(BIN / "flower-supernode"),
                "--root-certificates",
                str(self.certs / "ca.pem"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--auth-supernode-private-key",
                str(private),
                "--node-config",
                f"partition-id={i} num-partitions={self.agents}",
                "--port",
                str(free_port()),
            )

    def run_app(
        self,
        app: Path,
        run_config: str,
        rounds_done: Callable[[], int],
        *,
        rounds: int,
        round_limit: float,
        min_available: int,
    ) -> dict[str, Any]:
        """``flwr run`` ``app``; waits for it to finish or cuts it. Returns status and timings."""
        started = self._run(
            [
                str(BIN / "flwr"),
                "run",
                str(app),
                "bench",
                "--run-config",
                run_config,
                "--format",
                "json",
            ],
            check=False,
        )
        try:
            answer = json.loads(started.stdout)
        except ValueError:
            answer = {}
        if "run-id" not in answer:
            said = answer.get("error-message") or started.stderr.strip()[-300:]
            return {"status": f"flwr run did not start: {said}", "seconds": 0.0}
        run_id = str(answer["run-id"])
        before = self.process_counts()
        began = last_progress = time.monotonic()
        done = 0
        lowest = psutil.virtual_memory().available
        status = "running"
        while True:
            time.sleep(2)
            lowest = min(lowest, psutil.virtual_memory().available)
            now_done = rounds_done()
            if now_done > done:
                done, last_progress = now_done, time.monotonic()
            listed = self._run(
                [str(BIN / "flwr"), "ls", "bench", "--run-id", run_id, "--format", "json"],
                check=False,
            )
            # A SuperLink too busy to answer in time says nothing: ask again next time.
            with contextlib.suppress(ValueError, KeyError, IndexError):
                status = json.loads(listed.stdout)["runs"][0]["status"]
            if status.startswith("finished"):
                break
            cut = None
            if time.monotonic() - last_progress > round_limit:
                cut = f"cut: round {done + 1} of {rounds} took over {round_limit:.0f} s"
            elif lowest < min_available:
                cut = (
                    f"cut in round {done + 1} of {rounds}: available memory fell to "
                    f"{lowest / 2**30:.1f} GiB (limit {min_available / 2**30:.1f} GiB)"
                )
            if cut is not None:
                self._run([str(BIN / "flwr"), "stop", run_id, "bench"], check=False)
                status = cut
                break
        after = self.process_counts()
        return {
            "status": status,
            "seconds": time.monotonic() - began,
            "lowest_available_gib": round(lowest / 2**30, 2),
            **{key: after[key] - before[key] for key in after},
        }

    def process_counts(self) -> dict[str, int]:
        """Messages the SuperNodes received and ClientApp processes they started, so far.

        A ``flwr-clientapp`` process must check in within Flower's task-token window
        (``HEARTBEAT_DEFAULT_INTERVAL``, 30 s) or its task goes back to pending and a
        new process starts: more processes than messages means starts were too slow.
        """
        counts = {"messages_received": 0, "clientapp_processes_started": 0}
        for i in range(self.agents):
            log = self.out / f"sn{i}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            counts["messages_received"] += text.count("Receiving: ")
            counts["clientapp_processes_started"] += text.count("Start `flwr-clientapp` process")
        return counts

    def stop(self) -> None:
        """Stop every process this site started."""
        kill_tree(self.processes)
        self.processes.clear()

    def _spawn(self, name: str, *argv: str) -> None:
        with (self.out / f"{name}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    list(argv), cwd=self.out, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
            )

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.out, env=self.env, capture_output=True, text=True, check=check
        )
