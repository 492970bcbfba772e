"""Per-round coordination overhead: ``stamen server`` against Flower's SuperLink/SuperNodes.

Overhead of a round = its wall time on the server minus the slowest device's
compute time in that round. Both runtimes run the same Stamen ServerApp and
ClientApp on the same config, over TLS on loopback, with real processes:

- Stamen: ``stamen server`` and ``--agents`` ``stamen agent`` processes. Each
  agent logs its ClientApp time per round ("round R: done in X s").
- Flower: ``flower-superlink`` (TLS, SuperNode auth) and ``--agents``
  ``flower-supernode`` processes, driven by ``flwr run``. Flower does not
  report device compute, so the Stamen side's slowest device time for the same
  round stands in for it. The apps, data and seeds are the same.

Round 1 includes each device's first-call warm-up and is reported but left out
of the means. Writes ``results.json`` and ``results.md`` into ``--out``.

    python benchmarks/edge_overhead.py --agents 50 --rounds 4 --out runs/edge-overhead
    python benchmarks/edge_overhead.py --agents 4 --rounds 3 --skip-flower   # Stamen only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "COLUMNS": "200",
    "OMP_NUM_THREADS": "1",
    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
}
CONFIG = {"dataset": "digits", "model": "mlp", "preset": "fp32", "lr": "0.1", "local-epochs": "3"}
DONE = re.compile(r"round (\d+): done in ([0-9.]+) s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill the processes we started and their children, by PID."""
    import psutil

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


def start(out: Path, name: str, *argv: str) -> subprocess.Popen[bytes]:
    with (out / f"{name}.log").open("wb") as log:
        return subprocess.Popen(list(argv), cwd=out, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def run_stamen(out: Path, agents: int, rounds: int) -> dict[str, Any]:
    """Round wall times and per-device compute on ``stamen server``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "devices.json").unlink(missing_ok=True)
    stamen = str(BIN / "stamen")
    subprocess.run(
        [stamen, "certs", "init", "certs", "--host", "127.0.0.1", "--force"],
        cwd=out,
        env=ENV,
        check=True,
        capture_output=True,
    )
    for i in range(agents):
        subprocess.run(
            [stamen, "agent", "keygen", "--state-dir", f"a{i}", "--force"],
            cwd=out,
            env=ENV,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [stamen, "devices", "register", f"a{i}/device.pub", "--name", f"a{i}"],
            cwd=out,
            env=ENV,
            check=True,
            capture_output=True,
        )
    shutil.rmtree(out / "server-state", ignore_errors=True)
    shutil.rmtree(out / "results", ignore_errors=True)
    server = start(
        out,
        "server",
        stamen,
        "server",
        "--dataset",
        CONFIG["dataset"],
        "--model",
        CONFIG["model"],
        "--preset",
        CONFIG["preset"],
        "--num-devices",
        str(agents),
        "--devices-per-round",
        str(agents),
        "--rounds",
        str(rounds),
        "--set",
        "data.partition='iid'",
        "--set",
        f"training.lr={CONFIG['lr']}",
        "--set",
        f"training.local_epochs={CONFIG['local-epochs']}",
        "--address",
        "127.0.0.1:0",
        "--wait",
        "900",
        "--out",
        "results",
    )
    processes = [server]
    try:
        port = 0
        while not port:
            found = re.search(r"on port (\d+)", (out / "server.log").read_text(errors="replace"))
            port = int(found.group(1)) if found else 0
            if server.poll() is not None:
                raise SystemExit(f"stamen server exited; see {out / 'server.log'}")
            time.sleep(0.2)
        for i in range(agents):
            processes.append(
                start(
                    out,
                    f"a{i}",
                    stamen,
                    "agent",
                    "--server",
                    f"127.0.0.1:{port}",
                    "--certs",
                    "certs",
                    "--state-dir",
                    f"a{i}",
                    "--dataset",
                    CONFIG["dataset"],
                    "--partition",
                    "iid",
                    "--partition-id",
                    str(i),
                    "--num-partitions",
                    str(agents),
                    "--give-up-after",
                    "3",
                )
            )
        server.wait(timeout=3600)
    finally:
        stop(processes)
    summary = json.loads((out / "results" / "summary.json").read_text())
    compute: dict[int, float] = {}
    for i in range(agents):
        for found in DONE.finditer((out / f"a{i}.log").read_text(errors="replace")):
            r, seconds = int(found.group(1)), float(found.group(2))
            compute[r] = max(compute.get(r, 0.0), seconds)
    walls = summary["edge"]["round_seconds"]
    return {
        "round_seconds": walls,
        "slowest_compute": [compute.get(r + 1) for r in range(len(walls))],
        "accuracy": summary["final_accuracy"],
    }


def run_flower(out: Path, agents: int, rounds: int) -> dict[str, Any]:
    """Round wall times of the same apps on flower-superlink + flower-supernode."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(BIN / "stamen"), "certs", "init", "certs", "--host", "127.0.0.1", "--force"],
        cwd=out,
        env=ENV,
        check=True,
        capture_output=True,
    )
    home = out / "flwr-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    env = {**ENV, "FLWR_HOME": str(home)}
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{out / "certs" / "ca.pem"}"\n'
    )
    certs = out / "certs"
    processes = [
        start(
            out,
            "superlink",
            str(BIN / "flower-superlink"),
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
            str(out / "superlink.db"),
            "--disable-runtime-dependency-installation",
        )
    ]
    results = out / "results"
    shutil.rmtree(results, ignore_errors=True)
    try:
        while "Application startup complete" not in (out / "superlink.log").read_text(
            errors="replace"
        ):
            time.sleep(0.5)
        for i in range(agents):
            key = ec.generate_private_key(ec.SECP384R1())
            (out / f"sn{i}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
            (out / f"sn{i}.key").chmod(0o600)
            (out / f"sn{i}.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                )
            )
            subprocess.run(
                [str(BIN / "flwr"), "supernode", "register", str(out / f"sn{i}.pub"), "bench"],
                cwd=out,
                env=env,
                check=True,
                capture_output=True,
            )
            with (out / f"sn{i}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            str(BIN / "flower-supernode"),
                            "--root-certificates",
                            str(certs / "ca.pem"),
                            "--superlink",
                            f"127.0.0.1:{port}",
                            "--auth-supernode-private-key",
                            str(out / f"sn{i}.key"),
                            "--node-config",
                            f"partition-id={i} num-partitions={agents}",
                            "--port",
                            str(free_port()),
                        ],
                        cwd=out,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        app = out / "app"
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(
            REPO,
            app,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", "runs", "build"
            ),
        )
        run_config = (
            f"dataset='{CONFIG['dataset']}' model='{CONFIG['model']}' preset='{CONFIG['preset']}' "
            f"lr={CONFIG['lr']} local-epochs={CONFIG['local-epochs']} partition='iid' "
            f"num-devices={agents} devices-per-round={agents} rounds={rounds} out='{results}'"
        )
        started = subprocess.run(
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
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        run_id = json.loads(started.stdout)["run-id"]
        while True:
            listed = subprocess.run(
                [str(BIN / "flwr"), "ls", "bench", "--run-id", run_id, "--format", "json"],
                cwd=out,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            status = json.loads(listed.stdout)["runs"][0]["status"]
            if status.startswith("finished"):
                break
            time.sleep(2)
    finally:
        stop(processes)
    records = [json.loads(x) for x in (results / "metrics.jsonl").read_text().splitlines()]
    return {
        "status": status,
        "round_seconds": [r["seconds"] for r in records],
        "accuracy": records[-1]["accuracy"] if records else None,
    }


def overheads(walls: list[float], compute: list[float | None]) -> list[float | None]:
    return [w - c if c is not None else None for w, c in zip(walls, compute, strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/edge-overhead"))
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    stamen = run_stamen(out / "stamen", args.agents, args.rounds)
    stamen["overhead"] = overheads(stamen["round_seconds"], stamen["slowest_compute"])
    results: dict[str, Any] = {"agents": args.agents, "rounds": args.rounds, "stamen": stamen}
    if not args.skip_flower:
        flower = run_flower(out / "flower", args.agents, args.rounds)
        flower["overhead"] = overheads(flower["round_seconds"], stamen["slowest_compute"])
        results["flower"] = flower
    lines = [
        "| runtime | overhead per round, rounds 2+ (mean) | round wall time | accuracy |",
        "|---|---|---|---|",
    ]
    for name in ("stamen", "flower"):
        if name in results:
            data = results[name]
            later = [x for x in data["overhead"][1:] if x is not None]
            data["mean_overhead_after_round_1"] = statistics.fmean(later) if later else None
            walls = ", ".join(f"{w:.2f}" for w in data["round_seconds"])
            mean = data["mean_overhead_after_round_1"]
            lines.append(
                f"| {name} | {mean:.3f} s | {walls} s | {data['accuracy']} |"
                if mean is not None
                else f"| {name} | n/a | {walls} s | |"
            )
    if "flower" in results and results["stamen"]["mean_overhead_after_round_1"]:
        results["ratio"] = (
            results["flower"]["mean_overhead_after_round_1"]
            / results["stamen"]["mean_overhead_after_round_1"]
        )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in results.items() if k == "ratio"}))


if __name__ == "__main__":
    main()
