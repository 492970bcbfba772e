"""The device agent's footprint: resident memory and CPU time of one ``stamen agent``.

Starts a ``stamen server`` (TLS) and ``--agents`` real ``stamen agent``
processes on loopback, samples each agent's RSS with psutil while the rounds
run, and reports peak RSS and CPU seconds per agent (idle start-up included),
plus the CPU per round. Writes ``footprint.json`` into ``--out``.

    python benchmarks/edge_footprint.py --dataset mnist-small --model lenet --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STAMEN = str(Path(sys.executable).parent / "stamen")


def measure(dataset: str, model: str, agents: int, rounds: int, out: Path) -> dict[str, Any]:
    """Run the federation and sample the agents; returns the figures."""
    import psutil

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)

    def sh(*args: str) -> None:
        subprocess.run([STAMEN, *args], cwd=out, env=env, check=True, capture_output=True)

    sh("certs", "init", "certs", "--host", "127.0.0.1", "--force")
    for i in range(agents):
        sh("agent", "keygen", "--state-dir", f"agents/a{i}", "--force")
        sh(
            "devices",
            "register",
            f"agents/a{i}/device.pub",
            "--name",
            f"a{i}",
            "--registry",
            "devices.json",
        )
    (out / "server-state").mkdir(exist_ok=True)
    for stale in (out / "server-state").glob("*"):
        stale.unlink()
    log = (out / "server.log").open("wb")
    server = subprocess.Popen(
        [
            STAMEN,
            "server",
            "--dataset",
            dataset,
            "--model",
            model,
            "--rounds",
            str(rounds),
            "--num-devices",
            str(agents),
            "--devices-per-round",
            str(agents),
            "--set",
            "data.partition='iid'",
            "--address",
            "127.0.0.1:0",
            "--certs",
            "certs",
            "--registry",
            "devices.json",
            "--state-dir",
            "server-state",
            "--out",
            "results",
        ],
        cwd=out,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port = 0
    while not port:
        found = re.search(r"on port (\d+)", (out / "server.log").read_text(errors="replace"))
        port = int(found.group(1)) if found else 0
        if server.poll() is not None:
            raise SystemExit("the server exited early; see server.log")
        time.sleep(0.2)
    processes = [
        subprocess.Popen(
            [
                STAMEN,
                "agent",
                "--server",
                f"127.0.0.1:{port}",
                "--certs",
                "certs",
                "--state-dir",
                f"agents/a{i}",
                "--dataset",
                dataset,
                "--partition",
                "iid",
                "--partition-id",
                str(i),
                "--num-partitions",
                str(agents),
                "--give-up-after",
                "3",
            ],
            cwd=out,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(agents)
    ]
    peaks = [0] * agents
    cpu = [0.0] * agents
    done = threading.Event()

    def sample() -> None:
        handles = [psutil.Process(p.pid) for p in processes]
        while not done.wait(0.1):
            for i, handle in enumerate(handles):
                try:
                    peaks[i] = max(peaks[i], handle.memory_info().rss)
                    times = handle.cpu_times()
                    cpu[i] = times.user + times.system
                except psutil.Error:
                    continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    server.wait(timeout=3600)
    for process in processes:
        process.wait(timeout=120)
    done.set()
    sampler.join()
    figures = {
        "dataset": dataset,
        "model": model,
        "agents": agents,
        "rounds": rounds,
        "agent_peak_rss_mb": [round(p / 2**20, 1) for p in peaks],
        "agent_cpu_seconds": [round(c, 2) for c in cpu],
        "summary_final_accuracy": json.loads((out / "results" / "summary.json").read_text())[
            "final_accuracy"
        ],
    }
    (out / "footprint.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-small")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/edge-footprint"))
    args = parser.parse_args()
    print(
        json.dumps(
            measure(args.dataset, args.model, args.agents, args.rounds, args.out.resolve()),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
