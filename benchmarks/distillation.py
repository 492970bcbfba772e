"""Benchmark: FedAvg vs ensemble distillation (FedDF) vs tiered students, in one run.

MNIST split over 100 devices by Dirichlet(0.1), the ``mixed`` fleet (three tiers: phone,
iot, mcu), LeNet, the same seed and rounds for the three arms:

- ``fedavg``: compressed FedAvg, no distillation;
- ``feddf``: the same, then ensemble distillation on server-held unlabelled inputs;
- ``tiered``: FedDF where the ``mcu`` and ``iot`` tiers train students (``--students``)
  and the teacher is distilled into them.

Every arm exports its models to INT8 ONNX at the end (``edge`` in summary.json). Writes
``results.json`` and ``results.md`` into ``--out``.

    python benchmarks/distillation.py --rounds 30 --out runs/benchmark-distillation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ARMS = ("fedavg", "feddf", "tiered")


def arm_overrides(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config of one arm."""
    overrides: dict[str, Any] = {
        "preset": args.preset,
        "dataset": args.dataset,
        "model": "lenet",
        "num-devices": 100,
        "devices-per-round": args.devices_per_round,
        "rounds": args.rounds,
        "partition": "dirichlet",
        "alpha": args.alpha,
        "seed": args.seed,
        "fleet.preset": "mixed",
        "federation.workers": 1,
        "distill.edge_metrics": True,
        "distill.steps": args.distill_steps,
        "distill.holdout_size": args.holdout,
        "distill.temperature": args.temperature,
        "distill.every_k": args.every_k,
    }
    if arm != "fedavg":
        overrides["distill.enabled"] = True
    if arm == "tiered":
        overrides["distill.students"] = args.students
    return overrides


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """One federation; returns its summary (without the config) and per-round records."""
    from stamen.config import load_config
    from stamen.launch import simulate
    from stamen.server import ResultsWriter

    config = load_config(overrides=arm_overrides(arm, args))
    out = args.out / arm
    started = time.perf_counter()
    summary = simulate(config, ResultsWriter(out))
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "arm": arm,
        "seconds": time.perf_counter() - started,
        "summary": {k: v for k, v in summary.items() if k != "config"},
        "rounds": rounds,
    }


def last_mean(rounds: list[dict[str, Any]], key: str, count: int = 5) -> float | None:
    """Mean of ``key`` over the last ``count`` rounds that report it."""
    values = [r[key] for r in rounds if key in r][-count:]
    return statistics.fmean(values) if values else None


def pct(value: float | None) -> str:
    """``0.9712`` to ``'97.12%'``."""
    return "-" if value is None else f"{100 * value:.2f}%"


def table(results: list[dict[str, Any]], students: str) -> str:
    """The markdown comparison."""
    lines = [
        "| arm | model | params | accuracy (final) | mean of last 5 rounds | "
        "before distillation (last 5) | INT8 artifact | artifact accuracy | p50 latency |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        summary, rounds = result["summary"], result["rounds"]
        edge = summary.get("edge", {})
        rows = [("global", "accuracy", summary["final_accuracy"])]
        if result["arm"] == "tiered":
            for tier in [s.split("=")[0].strip() for s in students.split(",") if s.strip()]:
                rows.append((tier, f"{tier}_accuracy", rounds[-1].get(f"{tier}_accuracy")))
        for tier, key, final in rows:
            metrics = edge.get(tier, {})
            before = last_mean(rounds, "accuracy_before_distill") if tier == "global" else None
            lines.append(
                f"| {result['arm']} | {'teacher' if tier == 'global' else tier + ' student'} | "
                f"{metrics.get('params', '-')} | {pct(final)} | {pct(last_mean(rounds, key))} | "
                f"{pct(before)} | {metrics.get('artifact_bytes', '-')} B | "
                f"{pct(metrics.get('artifact_accuracy'))} | "
                f"{metrics.get('latency_ms_p50', float('nan')):.3f} ms |"
            )
    return "\n".join(lines)


def main() -> None:
    """Run the three arms one after another and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--devices-per-round", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="edge")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--students", default="mcu=0.25:4,iot=0.5")
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--holdout", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--every-k", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-distillation"))
    parser.add_argument(
        "--report-only", action="store_true", help="Rebuild the table from results.json."
    )
    args = parser.parse_args()
    import torch

    # One thread: on a shared 2-core machine, two contending threads are many times slower.
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results_path = args.out / "results.json"
    if args.report_only:
        results = json.loads(results_path.read_text())["results"]
    else:
        results = [run_arm(arm, args) for arm in args.arms]
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        results_path.write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    markdown = table(results, args.students)
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
