"""Load test: thousands of emulated agents, all connected at once, against one edge server.

For each ``--agents`` size, starts the real edge server (``edge_load_server.py``:
``stamen server``'s own pieces, TLS, registry, checkpoints, digits and the MLP,
with only the per-address Join budget raised, since every emulated device is on
127.0.0.1), then the agents over several processes (``edge_load_fleet.py``) at
``nice 10``: they share the server's cores and yield them when the server has
work. Each agent has its own Ed25519 key, registered, and its own TLS channel,
and speaks the real protocol (join, authenticate, task stream, heartbeats,
signed chunked uploads, the run-ended notice); only its training is replaced by
a cheap valid update. The server waits for every agent
to connect, then samples ``--per-round`` of them in each of ``--rounds`` rounds.

Reports, per size: lost updates (sampled minus accepted: must be 0), the
server's RSS (started, all connected, peak; psutil every 0.25 s), and the
coordination overhead of each round: its wall time on the server (dispatch to
close, ``edge-rounds.jsonl``) minus the slowest device's compute in that round
(the agents time their cheap update). Writes ``edge_load.json`` and
``edge_load.md`` into ``--results``.

    python benchmarks/edge_load.py --agents 1000 3000 10000 --rounds 5 --per-round 1000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
STAMEN = str(Path(sys.executable).parent / "stamen")
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
AGENTS_PER_PROCESS = 2500
FLEET_NICENESS = 10
"""The emulated fleet yields the cores to the server whenever the server has work: its
10,000 devices would bring their own CPUs, and the server's overhead is what is measured."""


def prepare(root: Path, agents: int) -> None:
    """Certificates, one key per agent (registered), and the model-signing key in hex."""
    from cryptography.hazmat.primitives import serialization

    from stamen.contract.edge import generate_key, load_public_key, public_bytes
    from stamen.server.edge import DeviceRegistry

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(
        [STAMEN, "certs", "init", "certs", "--host", "127.0.0.1"],
        cwd=root,
        env=ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )
    keys = [generate_key() for _ in range(agents)]
    DeviceRegistry(root / "devices.json").register_many(
        [(public_bytes(key.public_key()), f"a{i}") for i, key in enumerate(keys)]
    )
    raw = [
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        for key in keys
    ]
    processes = max(2, math.ceil(agents / AGENTS_PER_PROCESS))
    for p in range(processes):
        (root / f"keys-{p}.bin").write_bytes(b"".join(raw[p::processes]))
    model_key = load_public_key(root / "certs" / "model-signing.pub")
    (root / "model-signing.hex").write_text(model_key.hex())


def run_size(root: Path, agents: int, per_round: int, rounds: int) -> dict[str, Any]:
    """One load run; returns its figures."""
    import psutil

    prepare(root, agents)
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str, niceness: int = 0) -> subprocess.Popen[bytes]:
        with (root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [PYTHON, *argv],
                cwd=root,
                env=ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            )
        processes.append(process)
        return process

    server = start(
        "server",
        str(HERE / "edge_load_server.py"),
        "--agents",
        str(agents),
        "--per-round",
        str(per_round),
        "--rounds",
        str(rounds),
        "--deadline",
        "600",
        "--root",
        str(root),
    )
    log = root / "server.log"
    try:
        port = wait_for(
            lambda: re.search(r"on port (\d+)", log.read_text(errors="replace")), server
        )
        memory = psutil.Process(server.pid)
        started_rss = memory.memory_info().rss
        samples: list[tuple[float, int]] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                with contextlib.suppress(psutil.Error):
                    samples.append((time.time(), memory.memory_info().rss))

        threading.Thread(target=sample, daemon=True).start()
        began = time.monotonic()
        fleets = []
        count = len(list(root.glob("keys-*.bin")))
        for p in range(count):
            fleets.append(
                start(
                    f"fleet-{p}",
                    str(HERE / "edge_load_fleet.py"),
                    "--address",
                    f"127.0.0.1:{port.group(1)}",
                    "--ca",
                    "certs/ca.pem",
                    "--model-key",
                    "model-signing.hex",
                    "--keys",
                    f"keys-{p}.bin",
                    "--first-index",
                    str(p * agents),
                    "--ramp",
                    str(max(50.0, 600.0 / count)),
                    "--out",
                    f"fleet-{p}.json",
                    niceness=FLEET_NICENESS,
                )
            )
        wanted = f"devices connected: {agents}/{agents}"
        wait_for(lambda: wanted in log.read_text(errors="replace"), server, timeout=1800)
        connected_after = time.monotonic() - began
        connected_rss = memory.memory_info().rss
        fleet_cpu = [cpu_seconds(fleet.pid) for fleet in fleets]
        code = server.wait(timeout=3600)
        fleet_cpu = [cpu_seconds(f.pid) - c for f, c in zip(fleets, fleet_cpu, strict=True)]
        sampling.set()
        for fleet in fleets:
            fleet.wait(timeout=300)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    run = figures(root, agents, per_round, rounds, code, connected_after, samples)
    run["server_rss_all_connected_mib"] = round(connected_rss / 2**20, 1)
    run["server_rss_per_idle_device_kib"] = round((connected_rss - started_rss) / agents / 1024, 1)
    run["emulator_cpu_seconds_per_round"] = round(sum(fleet_cpu) / max(1, run["rounds"]), 2)
    return run


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (0 once it is gone)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def wait_for(found: Any, process: subprocess.Popen[bytes], timeout: float = 300.0) -> Any:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        value = found()
        if value:
            return value
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see its log")
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s")


def figures(
    root: Path,
    agents: int,
    per_round: int,
    rounds: int,
    code: int,
    connected_after: float,
    samples: list[tuple[float, int]],
) -> dict[str, Any]:
    results = root / "results"
    metrics = [json.loads(x) for x in (results / "metrics.jsonl").read_text().splitlines()]
    edge = [json.loads(x) for x in (results / "edge-rounds.jsonl").read_text().splitlines()]
    train = [r for r in edge if r["message_type"] == "train"]
    fleets = [json.loads(p.read_text()) for p in sorted(root.glob("fleet-*.json"))]
    slowest: dict[str, float] = {}
    counts: dict[str, int] = {}
    ended: dict[str, int] = {}
    for fleet in fleets:
        for group, compute in fleet["compute"].items():
            slowest[group] = max(slowest.get(group, 0.0), compute["max"])
        for name, value in fleet["counts"].items():
            counts[name] = counts.get(name, 0) + value
        for name, value in fleet["run_ended"].items():
            ended[name] = ended.get(name, 0) + value
    trace = [json.loads(x) for x in (root / "server-rounds.jsonl").read_text().splitlines()]
    trace = [t for t in trace if t["type"] == "train"]
    server_cpu = [b["cpu"] - a["cpu"] for a, b in itertools.pairwise(trace)]
    in_round = [json.loads(x) for x in (root / "server-round-cpu.jsonl").read_text().splitlines()]
    walls = [r["seconds"] for r in train]
    computes = [slowest.get(r["group_id"], 0.0) for r in train]
    overheads = [w - c for w, c in zip(walls, computes, strict=True)]
    sampled = sum(r["sampled"] for r in metrics)
    accepted = sum(r["accepted"] for r in metrics)
    mib = 2**20
    return {
        "agents": agents,
        "per_round": per_round,
        "rounds": len(metrics),
        "server_exit_code": code,
        "connected_all_after_s": round(connected_after, 1),
        "updates_sampled": sampled,
        "updates_accepted": accepted,
        "lost_updates": sampled - accepted + (rounds - len(metrics)) * per_round,
        "rejected": sum(r["rejected"] for r in metrics),
        "timed_out": sum(r["timed_out"] for r in train),
        "dropouts": sum(r["dropouts"] for r in train),
        "server_rss_peak_mib": round(max((rss for _, rss in samples), default=0) / mib, 1),
        "server_rss_peak_when": peak_phase(samples, trace),
        "server_rss_after_each_round_mib": [round(t["rss"] / mib, 1) for t in trace],
        "server_cpu_seconds_between_rounds": [round(c, 2) for c in server_cpu],
        "server_cpu_seconds_in_round": [round(c["cpu"], 2) for c in in_round],
        "server_io_thread_cpu_seconds_in_round": [round(c["io"], 2) for c in in_round],
        "round_seconds": [round(w, 3) for w in walls],
        "dispatch_seconds": [round(r["dispatch_seconds"], 3) for r in train],
        "slowest_device_compute_seconds": [round(c, 4) for c in computes],
        "overhead_seconds": [round(o, 3) for o in overheads],
        "overhead_mean_s": round(statistics.fmean(overheads), 3) if overheads else None,
        "overhead_max_s": round(max(overheads), 3) if overheads else None,
        "agent_counts": counts,
        "run_ended_notices": ended,
        "final_accuracy": json.loads((results / "summary.json").read_text())["final_accuracy"],
        "full_gc_pauses_in_rounds_seconds": gc_pauses_in_rounds(root, trace),
    }


def peak_phase(samples: list[tuple[float, int]], trace: list[dict[str, Any]]) -> str:
    """When the server's RSS peaked: in which round, between which, or before or after."""
    if not samples or not trace:
        return "unknown"
    at = max(samples, key=lambda sample: sample[1])[0]
    for t in trace:
        if t["at"] - t["seconds"] <= at <= t["at"]:
            return f"in round {t['round']}"
    if at < trace[0]["at"] - trace[0]["seconds"]:
        return "before the first round"
    if at > trace[-1]["at"]:
        return "after the last round"
    return "between rounds"


def gc_pauses_in_rounds(root: Path, trace: list[dict[str, Any]]) -> list[list[float]]:
    """Per round, the server's full garbage collections (generation 2) that ended in it:
    each pause stops every thread of the server."""
    path = root / "server-gc.jsonl"
    pauses = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [
        [round(p["seconds"], 3) for p in pauses if t["at"] - t["seconds"] <= p["at"] <= t["at"]]
        for t in trace
    ]


def write_results(directory: Path, runs: list[dict[str, Any]], command: str) -> None:
    import grpc

    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "grpc_version": grpc.__version__,
        "cpus": os.cpu_count(),
        "fleet_niceness": FLEET_NICENESS,
        "runs": runs,
    }
    (directory / "edge_load.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"Command: `{command}` (grpcio {grpc.__version__}, {os.cpu_count()} CPUs, agents and "
        f"server on the same machine, the agents' processes at nice {FLEET_NICENESS}).",
        "",
        "| agents connected | per round × rounds | lost updates | server RSS peak | "
        "RSS per idle device | overhead per round (mean / max) | all connected after |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['agents']:,} | {run['per_round']:,} × {run['rounds']} | "
            f"{run['lost_updates']} | {run['server_rss_peak_mib']:,.0f} MiB | "
            f"{run['server_rss_per_idle_device_kib']:.0f} KiB | "
            f"{run['overhead_mean_s']:.2f} s / {run['overhead_max_s']:.2f} s | "
            f"{run['connected_all_after_s']:.0f} s |"
        )
    (directory / "edge_load.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("runs/edge-load"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    runs = []
    for agents in args.agents:
        figures_ = run_size(
            args.work.resolve() / f"{agents}", agents, min(args.per_round, agents), args.rounds
        )
        print(json.dumps(figures_, indent=2), flush=True)
        runs.append(figures_)
    command = "python benchmarks/edge_load.py " + " ".join(sys.argv[1:])
    write_results(args.results, runs, command.strip())
    if any(run["lost_updates"] or run["server_exit_code"] for run in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
