"""Benchmark: asynchronous FedBuff against synchronous FedAvg on a 3-tier simulated fleet.

MNIST split over 100 devices by Dirichlet(0.3), on the simulation grid's
``mixed`` fleet (phones, IoT boards and microcontrollers: a 10x compute
spread), the edge preset. Synchronous FedAvg samples ``--concurrency`` devices a
round and waits for the slowest; FedBuff keeps ``--concurrency`` devices
training and aggregates every ``--buffer`` updates. Both report the simulated
time (the grid's clock) at which the global model first reaches each target
accuracy, and FedBuff the staleness of every update it aggregated.

    python benchmarks/fedbuff.py --rounds 30 --aggregations 90 --out runs/benchmark-fedbuff

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TARGETS = (0.7, 0.8, 0.85, 0.9)


def run_one(strategy: str, rounds: int, args: dict[str, Any], out: Path) -> dict[str, Any]:
    """One federation on the simulation grid, in a worker process."""
    import torch

    from stamen.config import load_config
    from stamen.launch import simulate
    from stamen.server import CollectingReporter, Reporters, ResultsWriter

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    config = load_config(
        overrides={
            "preset": "edge",
            "dataset": args["dataset"],
            "model": args["model"],
            "num-devices": 100,
            "devices-per-round": args["concurrency"],
            "rounds": rounds,
            "partition": "dirichlet",
            "alpha": 0.3,
            "seed": args["seed"],
            "strategy": strategy,
            "strategy.buffer_size": args["buffer"],
            "fleet.preset": "mixed",
            "federation.workers": 1,
        }
    )
    collector = CollectingReporter()
    summary = simulate(config, Reporters(ResultsWriter(out / strategy), collector))
    curve = [(r.clock, r.accuracy) for r in collector.records]
    return {
        "strategy": strategy,
        "rounds": len(curve),
        "device_updates": sum(r.accepted for r in collector.records),
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "simulated_seconds": curve[-1][0] if curve else 0.0,
        "time_to_target": {str(t): time_to(curve, t) for t in TARGETS},
        "staleness_histogram": summary.get("staleness_histogram"),
        "wall_seconds": summary["wall_seconds"],
        "curve": curve,
    }


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Simulated seconds at which accuracy first reached ``target``; None if never."""
    return next((clock for clock, accuracy in curve if accuracy >= target), None)


def main() -> None:
    """Run both strategies, then write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="FedAvg rounds")
    parser.add_argument("--aggregations", type=int, default=90, help="FedBuff aggregations")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--buffer", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-fedbuff"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shared = {k: getattr(args, k) for k in ("concurrency", "buffer", "seed", "dataset", "model")}
    with ProcessPoolExecutor(max_workers=2) as pool:
        sync = pool.submit(run_one, "fedavg", args.rounds, shared, args.out)
        buff = pool.submit(run_one, "fedbuff", args.aggregations, shared, args.out)
        runs = [sync.result(), buff.result()]
    result = {**shared, "fleet": "mixed", "partition": "dirichlet(0.3)", "runs": runs}
    result["wall_seconds"] = time.perf_counter() - started
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(runs, args)
    (args.out / "results.md").write_text(markdown)
    print(markdown)


def to_markdown(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The README table."""
    lines = [
        f"MNIST, Dirichlet(0.3), 100 devices on the mixed fleet (phone/iot/mcu, 10x speed "
        f"spread), {args.model}, edge preset, {args.concurrency} devices training at once, "
        f"FedBuff buffer {args.buffer}, seed {args.seed}",
        "",
        "| strategy | rounds / aggregations | device updates | best accuracy | "
        + " | ".join(f"simulated s to {100 * t:.0f}%" for t in TARGETS)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(TARGETS),
    ]
    for run in runs:
        times = [run["time_to_target"][str(t)] for t in TARGETS]
        cells = " | ".join("-" if s is None else f"{s:,.0f}" for s in times)
        lines.append(
            f"| {run['strategy']} | {run['rounds']} | {run['device_updates']} | "
            f"{100 * run['best_accuracy']:.2f}% | {cells} |"
        )
    buff = next(r for r in runs if r["strategy"] == "fedbuff")
    histogram = buff["staleness_histogram"] or {}
    total = sum(histogram.values()) or 1
    lines += [
        "",
        "FedBuff staleness (versions the model moved on while a device trained): "
        + ", ".join(f"{k}: {100 * v / total:.0f}%" for k, v in histogram.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
