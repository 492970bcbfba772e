"""Load test: many emulated agents against one ``stamen server`` process, over TLS.

Starts a real ``stamen server`` (TLS, device registry, checkpoints) and, in
this process, ``--agents`` agents: each has its own Ed25519 key, its own gRPC
connection (a local subchannel pool per channel) and runs the real agent loop
with the real Stamen ClientApp on its own partition of ``digits``. Every agent
is sampled in every round. Reports updates accepted, lost updates, round wall
times, and the server process's resident memory (psutil) sampled through the
run, and writes ``results.json`` into ``--out``.

    python benchmarks/edge_load.py --agents 200 --rounds 5 --out runs/edge-load
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

STAMEN = str(Path(sys.executable).parent / "stamen")


def sh(*args: str, cwd: Path) -> None:
    """Run a short ``stamen`` command, failing loudly."""
    subprocess.run([STAMEN, *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def run_load(agents: int, rounds: int, out: Path, deadline: float = 300.0) -> dict[str, Any]:
    """Run the load test; returns the figures."""
    import grpc
    import psutil
    import torch

    from stamen.client import FleetData, client_app
    from stamen.client.agent import Agent, AgentSettings, AgentStateStore
    from stamen.config import load_config
    from stamen.contract.edge import load_public_key
    from stamen.server.edge import DeviceRegistry

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    # Once the server finishes, every agent would log its reconnect attempts.
    logging.getLogger("stamen.agent").setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    sh("certs", "init", str(out / "certs"), "--host", "127.0.0.1", "--force", cwd=out)
    registry = DeviceRegistry(out / "devices.json")
    stores = []
    for i in range(agents):
        store = AgentStateStore(out / "agents" / f"a{i}")
        store.create_key(overwrite=True)
        registry.register(load_public_key(store.public_key_path), name=f"a{i}")
        stores.append(store)
    log = (out / "server.log").open("wb")
    server = subprocess.Popen(
        [
            STAMEN,
            "server",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--set",
            "data.partition='iid'",
            "--num-devices",
            str(agents),
            "--devices-per-round",
            str(agents),
            "--rounds",
            str(rounds),
            "--address",
            "127.0.0.1:0",
            "--certs",
            str(out / "certs"),
            "--registry",
            str(out / "devices.json"),
            "--state-dir",
            str(out / "server-state"),
            "--out",
            str(out / "results"),
            "--deadline",
            str(deadline),
            "--wait",
            "600",
        ],
        cwd=out,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    port = 0
    for _ in range(600):
        found = re.search(r"on port (\d+)", (out / "server.log").read_text(errors="replace"))
        if found:
            port = int(found.group(1))
            break
        if server.poll() is not None:
            raise SystemExit(f"the server exited early; see {out / 'server.log'}")
        time.sleep(0.2)
    process = psutil.Process(server.pid)
    samples: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            try:
                samples.append((time.monotonic(), process.memory_info().rss))
            except psutil.Error:
                return

    threading.Thread(target=sample, daemon=True).start()
    config = load_config(overrides={"dataset": "digits", "partition": "iid"})
    fleet = FleetData(config.data, num_devices=agents, seed=0)
    model_key = load_public_key(out / "certs" / "model-signing.pub")
    runners = []
    started = time.monotonic()
    for i, store in enumerate(stores):
        settings = AgentSettings(
            server=f"127.0.0.1:{port}",
            state_dir=store.directory,
            ca_cert=out / "certs" / "ca.pem",
            model_key=model_key,
            node_config={"partition-id": i, "num-partitions": agents},
            give_up_after=5.0,
        )
        agent = Agent(settings, client_app(fleet), store.load_key())
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        runners.append((agent, thread))
    code = server.wait(timeout=3600)
    elapsed = time.monotonic() - started
    sampling.set()
    for agent, _ in runners:
        agent.stop_event.set()
    for _, thread in runners:
        thread.join(timeout=30)
    summary = json.loads((out / "results" / "summary.json").read_text())
    metrics = [json.loads(x) for x in (out / "results" / "metrics.jsonl").read_text().splitlines()]
    accepted = sum(r["accepted"] for r in metrics)
    rss = [value for _, value in samples]
    figures = {
        "agents": agents,
        "rounds": len(metrics),
        "server_exit_code": code,
        "updates_expected": agents * rounds,
        "updates_accepted": accepted,
        "lost_updates": agents * rounds - accepted,
        "rejected": sum(r["rejected"] for r in metrics),
        "timed_out": summary["edge"]["timed_out"],
        "late_dropped": summary["edge"]["late_dropped"],
        "round_seconds": summary["edge"]["round_seconds"],
        "final_accuracy": summary["final_accuracy"],
        "server_rss_peak_mb": max(rss) / 2**20 if rss else None,
        "server_rss_first_quarter_peak_mb": _peak(rss[: max(1, len(rss) // 4)]),
        "server_rss_last_quarter_peak_mb": _peak(rss[-max(1, len(rss) // 4) :]),
        "wall_seconds": elapsed,
        "grpc_version": grpc.__version__,
    }
    (out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _peak(values: list[int]) -> float | None:
    return max(values) / 2**20 if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/edge-load"))
    args = parser.parse_args()
    figures = run_load(args.agents, args.rounds, args.out.resolve())
    print(json.dumps(figures, indent=2))
    if figures["lost_updates"] or figures["server_exit_code"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
