"""Per-round coordination overhead: ``stamen server`` against Flower's SuperLink/SuperNodes,
and what each of Flower's costs comes from.

Overhead of a round = its wall time on the server (``metrics.jsonl`` ``seconds``:
the exchange, aggregation and central evaluation) minus the slowest device's
compute time in that round. Both runtimes run the same Stamen ServerApp and
ClientApp on the same config, over TLS on loopback, with real processes, one
after the other, for each fleet size in ``--agents``:

- Stamen: ``stamen server`` and N ``stamen agent`` processes. Each agent logs its
  ClientApp time per round ("round R: done in X s").
- Flower: ``flower-superlink`` (TLS, SuperNode auth) and N ``flower-supernode``
  processes, driven by ``flwr run``. Flower does not report device compute, so the
  Stamen side's slowest device time for the same round stands in for it.

Flower's round is then taken apart, measured on the same machine in the same run:

- ``trivial round``: the same SuperLink and SuperNodes run a ClientApp that does
  nothing and imports only flwr (``flower_trivial_app/``). Its round is Flower's
  fixed cost: the SuperNode's 3 s idle poll, the SuperExec's 1 s task poll, the
  ServerApp grid's 3 s reply poll, and one new ``flwr-clientapp`` process per
  message (in both of Flower 1.41's isolation modes: ``flwr-clientapp`` runs one
  task and exits).
- ``ClientApp start-up``: N processes importing the Stamen ClientApp module
  (PyTorch, Stamen, Flower) started at once, until the last exits; also 1 alone.
  Every Flower round pays this again, N at once on the machine's cores.

Round 1 includes each device's first-call warm-up and is left out of the means.
Each Flower run is bounded (``--flower-round-limit``, ``--min-available-gib``):
a run cut short says so in its ``status``. Writes ``edge_overhead.json`` and
``edge_overhead.md`` into ``--out`` (the processes' files go to ``--work``).

    nice -n 10 python benchmarks/edge_overhead.py --agents 4 10 50 --rounds 3
    python benchmarks/edge_overhead.py --agents 4 --rounds 3 --skip-flower   # Stamen only
"""

from __future__ import annotations

import argparse
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

import psutil
from flower_runtime import BIN, FlowerSite, import_seconds, kill_tree

REPO = Path(__file__).resolve().parents[1]
TRIVIAL_APP = Path(__file__).resolve().parent / "flower_trivial_app"
ENV = {
    **os.environ,
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "COLUMNS": "200",
    "OMP_NUM_THREADS": "1",
    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
}
CONFIG = {"dataset": "digits", "model": "mlp", "preset": "fp32", "lr": "0.1", "local-epochs": "3"}
DONE = re.compile(r"round (\d+): done in ([0-9.]+) s")
CLIENT_APP_MODULE = "stamen.client.app"
"""What a Flower ClientApp process imports to load the Stamen ClientApp."""
FLOWER_CLIENT_PROCESS = "flwr.supernode.runtime.run_clientapp"
"""What every ``flwr-clientapp`` process imports before it loads any app."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(out: Path, name: str, *argv: str) -> subprocess.Popen[bytes]:
    with (out / f"{name}.log").open("wb") as log:
        return subprocess.Popen(list(argv), cwd=out, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def records(path: Path) -> list[dict[str, Any]]:
    """The rounds of a ``metrics.jsonl`` written so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_stamen(out: Path, agents: int, rounds: int, min_available: int) -> dict[str, Any]:
    """Round wall times and per-device compute on ``stamen server``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "devices.json").unlink(missing_ok=True)
    stamen = str(BIN / "stamen")

    def quiet(*argv: str) -> None:
        subprocess.run([stamen, *argv], cwd=out, env=ENV, check=True, capture_output=True)

    quiet("certs", "init", "certs", "--host", "127.0.0.1", "--force")
    for i in range(agents):
        quiet("agent", "keygen", "--state-dir", f"a{i}", "--force")
        quiet("devices", "register", f"a{i}/device.pub", "--name", f"a{i}")
    shutil.rmtree(out / "server-state", ignore_errors=True)
    shutil.rmtree(out / "results", ignore_errors=True)
    server = start(
        out,
        "server",
        stamen,
        "server",
        *("--dataset", CONFIG["dataset"], "--model", CONFIG["model"]),
        *("--preset", CONFIG["preset"], "--num-devices", str(agents)),
        *("--devices-per-round", str(agents), "--rounds", str(rounds)),
        *("--set", "data.partition='iid'", "--set", f"training.lr={CONFIG['lr']}"),
        *("--set", f"training.local_epochs={CONFIG['local-epochs']}"),
        *("--address", "127.0.0.1:0", "--wait", "1800", "--out", "results"),
    )
    processes = [server]
    status = "finished"
    lowest = psutil.virtual_memory().available
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
                    *("--server", f"127.0.0.1:{port}", "--certs", "certs"),
                    *("--state-dir", f"a{i}", "--dataset", CONFIG["dataset"]),
                    *("--partition", "iid", "--partition-id", str(i)),
                    *("--num-partitions", str(agents), "--give-up-after", "3"),
                )
            )
        while server.poll() is None:
            time.sleep(1)
            lowest = min(lowest, psutil.virtual_memory().available)
            if lowest < min_available:
                done = len(records(out / "results" / "metrics.jsonl"))
                status = f"cut in round {done + 1}: available memory fell below the limit"
                break
    finally:
        kill_tree(processes)
    rows = records(out / "results" / "metrics.jsonl")
    compute: dict[int, float] = {}
    for i in range(agents):
        for found in DONE.finditer((out / f"a{i}.log").read_text(errors="replace")):
            r, seconds = int(found.group(1)), float(found.group(2))
            compute[r] = max(compute.get(r, 0.0), seconds)
    summary_path = out / "results" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "status": status,
        "round_seconds": [r["seconds"] for r in rows],
        "exchange_seconds": summary.get("edge", {}).get("round_seconds", []),
        "slowest_compute": [compute.get(r["round"]) for r in rows],
        "accuracy": rows[-1]["accuracy"] if rows else None,
        "lowest_available_gib": round(lowest / 2**30, 2),
    }


def run_flower(
    out: Path, agents: int, rounds: int, round_limit: float, min_available: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Stamen apps, then the trivial app, on one SuperLink and ``agents`` SuperNodes."""
    site = FlowerSite(out, agents, ENV, free_port())
    app = out / "app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(
        REPO,
        app,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", "runs", "build", "benchmarks"
        ),
    )
    results = out / "results"
    trivial_out = out / "trivial.json"
    shutil.rmtree(results, ignore_errors=True)
    trivial_out.unlink(missing_ok=True)
    try:
        site.start(free_port)
        stamen_run = site.run_app(
            app,
            f"dataset='{CONFIG['dataset']}' model='{CONFIG['model']}' preset='{CONFIG['preset']}' "
            f"lr={CONFIG['lr']} local-epochs={CONFIG['local-epochs']} partition='iid' "
            f"num-devices={agents} devices-per-round={agents} rounds={rounds} out='{results}'",
            lambda: len(records(results / "metrics.jsonl")),
            rounds=rounds,
            round_limit=round_limit,
            min_available=min_available,
        )
        trivial_run = site.run_app(
            TRIVIAL_APP,
            f"num-devices={agents} rounds={rounds} out='{trivial_out}'",
            lambda: len(_trivial(trivial_out).get("round_seconds", [])),
            rounds=rounds,
            round_limit=round_limit,
            min_available=min_available,
        )
    finally:
        site.stop()
    rows = records(results / "metrics.jsonl")
    stamen_run |= {
        "round_seconds": [r["seconds"] for r in rows],
        "accuracy": rows[-1]["accuracy"] if rows else None,
    }
    trivial_run["round_seconds"] = _trivial(trivial_out).get("round_seconds", [])
    return stamen_run, trivial_run


def _trivial(path: Path) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found


def after_first(values: list[float | None]) -> float | None:
    """The mean of rounds 2+ (round 1 pays every device's first-call warm-up)."""
    later = [v for v in values[1:] if v is not None]
    return statistics.fmean(later) if later else None


def overheads(walls: list[float], compute: list[float | None]) -> list[float | None]:
    return [w - c if c is not None else None for w, c in zip(walls, compute, strict=False)]


def measure(args: argparse.Namespace, agents: int, out: Path) -> dict[str, Any]:
    """Every figure for one fleet size."""
    min_available = int(args.min_available_gib * 2**30)
    stamen = run_stamen(out / f"stamen-{agents}", agents, args.rounds, min_available)
    stamen["overhead"] = overheads(stamen["round_seconds"], stamen["slowest_compute"])
    stamen["mean_round_after_1"] = after_first(stamen["round_seconds"])
    stamen["mean_overhead_after_1"] = after_first(stamen["overhead"])
    result: dict[str, Any] = {"agents": agents, "stamen": stamen}
    if args.skip_flower:
        return result
    flower, trivial = run_flower(
        out / f"flower-{agents}", agents, args.rounds, args.flower_round_limit, min_available
    )
    flower["overhead"] = overheads(flower["round_seconds"], stamen["slowest_compute"])
    flower["mean_round_after_1"] = after_first(flower["round_seconds"])
    flower["mean_overhead_after_1"] = after_first(flower["overhead"])
    trivial["mean_round_after_1"] = after_first(trivial["round_seconds"])
    result |= {"flower": flower, "flower_trivial": trivial}
    startup = {
        "flwr_clientapp_process_alone": statistics.median(
            import_seconds(FLOWER_CLIENT_PROCESS, 1, ENV) for _ in range(3)
        ),
        "stamen_clientapp_alone": statistics.median(
            import_seconds(CLIENT_APP_MODULE, 1, ENV) for _ in range(3)
        ),
    }
    if psutil.virtual_memory().available - agents * 300 * 2**20 > min_available:
        startup["stamen_clientapp_all_at_once"] = import_seconds(CLIENT_APP_MODULE, agents, ENV)
    result["clientapp_startup"] = startup
    if stamen["mean_overhead_after_1"] and flower["mean_overhead_after_1"]:
        result["ratio"] = flower["mean_overhead_after_1"] / stamen["mean_overhead_after_1"]
    return result


def seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "n/a"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| devices | runtime | round wall time, rounds 2+ (mean) | overhead per round, rounds 2+ "
        "| slowest device compute | accuracy | status |",
        "|---:|---|---|---|---|---|---|",
    ]
    for entry in report["fleets"]:
        n, stamen = entry["agents"], entry["stamen"]
        compute = after_first(stamen["slowest_compute"])
        for name, label in (("stamen", "`stamen server` + agents"), ("flower", "Flower")):
            if name not in entry:
                continue
            data = entry[name]
            lines.append(
                f"| {n} | {label} | {seconds(data['mean_round_after_1'])} | "
                f"{seconds(data['mean_overhead_after_1'])} | {seconds(compute)} | "
                f"{data['accuracy']} | {data['status']} |"
            )
    lines += [
        "",
        "Flower's round taken apart (same machine, same run):",
        "",
        "| devices | Flower round, Stamen apps | Flower round, trivial app (polling + a process "
        "per message) | Stamen ClientApp start-up, 1 alone | N at once | device compute "
        "| ClientApp processes started / messages |",
        "|---:|---|---|---|---|---|---|",
    ]
    for entry in report["fleets"]:
        if "flower" not in entry:
            continue
        startup = entry["clientapp_startup"]
        lines.append(
            f"| {entry['agents']} | {seconds(entry['flower']['mean_round_after_1'])} | "
            f"{seconds(entry['flower_trivial']['mean_round_after_1'])} | "
            f"{seconds(startup['stamen_clientapp_alone'])} | "
            f"{seconds(startup.get('stamen_clientapp_all_at_once'))} | "
            f"{seconds(after_first(entry['stamen']['slowest_compute']))} | "
            f"{entry['flower'].get('clientapp_processes_started')} / "
            f"{entry['flower'].get('messages_received')} |"
        )
    lines += ["", f"Machine: {report['machine']['cpus']} cores, shared with other jobs.", ""]
    lines += ["| devices | nice | load average before / after (1, 5, 15 min) | command |"]
    lines += ["|---:|---:|---|---|"]
    for entry in report["fleets"]:
        lines.append(
            f"| {entry['agents']} | {entry.get('nice', '?')} | {entry.get('load_before')} / "
            f"{entry.get('load_after')} | `{entry.get('command', report['command'])}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[4, 10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--work", type=Path, default=Path("runs/edge-overhead"), help="Processes' files and logs."
    )
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument(
        "--append",
        action="store_true",
        help="Keep the other fleet sizes already in --out/edge_overhead.json.",
    )
    parser.add_argument(
        "--flower-round-limit",
        type=float,
        default=900.0,
        help="Stop a Flower run whose round takes longer than this (seconds).",
    )
    parser.add_argument(
        "--min-available-gib",
        type=float,
        default=3.0,
        help="Stop a run when the machine's available memory falls below this.",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    work = args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": "python benchmarks/edge_overhead.py " + " ".join(sys.argv[1:]),
        "config": CONFIG,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "load_before": [round(x, 1) for x in os.getloadavg()]},
        "fleets": [],
    }
    earlier = out / "edge_overhead.json"
    if args.append and earlier.exists():  # keep the other fleet sizes of an earlier run
        kept = json.loads(earlier.read_text())["fleets"]
        report["fleets"] = [f for f in kept if f["agents"] not in args.agents]
    for agents in args.agents:
        started = time.monotonic()
        load_before = [round(x, 1) for x in os.getloadavg()]
        entry = measure(args, agents, work)
        entry |= {
            "seconds": round(time.monotonic() - started, 1),
            "nice": os.nice(0),
            "load_before": load_before,
            "load_after": [round(x, 1) for x in os.getloadavg()],
            "command": report["command"],
        }
        report["fleets"] = sorted([*report["fleets"], entry], key=lambda f: f["agents"])
        report["machine"]["load_after"] = [round(x, 1) for x in os.getloadavg()]
        (out / "edge_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "edge_overhead.md").write_text(markdown(report))
        print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
