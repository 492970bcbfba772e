"""Benchmark: robust aggregation against sign-flipped, scaled updates, and NaN/Inf rejection.

MNIST split over 100 devices by Dirichlet(0.3), 20 devices a round, the edge
preset (QAT, pruning, top-k + 4-bit + error-feedback uplink). 20% of the fleet
(chosen from the seed) sends its honest delta sign-flipped and scaled 10x,
re-encoded with the real uplink codec. Every strategy runs with and without
the attack, in one benchmark, on the same seed. Then each strategy runs two
short rounds in which the attackers send NaN, then Inf, updates: each must be
rejected with a reason and leave the model finite.

    python benchmarks/robust.py --rounds 30 --out runs/benchmark-robust

Writes ``results.json`` and ``results.md`` into ``--out``. A run whose
``summary.json`` is already in ``--out`` is reused, so an interrupted benchmark
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROBUST = ["median", "trimmed-mean", "norm-bounded", "krum", "multi-krum"]
TAIL_ROUNDS = 5


def base_overrides(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The federation every run shares."""
    return {
        "preset": args.preset,
        "dataset": args.dataset,
        "model": args.model,
        "num-devices": 100,
        "devices-per-round": args.devices_per_round,
        "partition": "dirichlet",
        "alpha": 0.3,
        "seed": seed,
        "fleet.preset": "ideal",  # every device online: the attack is the only disturbance
        # f = 8 of 20: a round holds 4 attackers on average, rarely more than 8.
        "strategy.krum_byzantine": 8,
        "strategy.trim_fraction": 0.3,
    }


def run_one(overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """One federation in a worker process, one torch thread; a finished one is reused."""
    if not (out / "summary.json").is_file():
        import torch

        from stamen.config import load_config
        from stamen.launch import simulate
        from stamen.server import ResultsWriter

        torch.set_num_threads(1)
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("flwr").setLevel(logging.ERROR)
        simulate(load_config(overrides=overrides), ResultsWriter(out))
    return stored_run(overrides, out)


def stored_run(overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """The figures of a finished run, read back from its results directory."""
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reasons = sorted({r["reason"] for record in records for r in record["rejections"]})
    return {
        "strategy": overrides["strategy"],
        "attack": overrides.get("attack.kind", "none"),
        "final_accuracy": summary["final_accuracy"],
        "tail_accuracy": statistics.fmean(r["accuracy"] for r in records[-TAIL_ROUNDS:]),
        "rejected": summary["rejected_updates"],
        "rejection_reasons": reasons[:3],
        "model_finite": all(math.isfinite(r["loss"]) for r in records),
        "wall_seconds": summary["wall_seconds"],
    }


def main() -> None:
    """Run every (strategy, attack) pair, then the NaN/Inf checks, and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--preset", default="edge")
    parser.add_argument("--devices-per-round", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-robust"))
    args = parser.parse_args()
    from stamen.config import StrategyName

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = base_overrides(args, args.seed)
    jobs: list[tuple[dict[str, Any], Path]] = []
    for strategy in ["fedavg", *ROBUST]:
        for attack in ("none", "sign-flip"):
            overrides = {**base, "rounds": args.rounds, "strategy": strategy}
            if attack != "none":
                overrides.update(
                    {"attack.kind": attack, "attack.fraction": 0.2, "attack.scale": 10}
                )
            jobs.append((overrides, args.out / f"{strategy}-{attack}"))
    for strategy in StrategyName:
        for attack in ("nan", "inf"):
            overrides = {
                **base,
                "rounds": 2,
                "strategy": strategy.value,
                "attack.kind": attack,
                "attack.fraction": 0.2,
            }
            jobs.append((overrides, args.out / f"{strategy.value}-{attack}"))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run_one, *zip(*jobs, strict=True)))
    accuracy = [r for r in runs if r["attack"] in ("none", "sign-flip")]
    poison = [r for r in runs if r["attack"] in ("nan", "inf")]
    result = {
        "rounds": args.rounds,
        "seed": args.seed,
        "dataset": args.dataset,
        "model": args.model,
        "preset": args.preset,
        "num_devices": 100,
        "devices_per_round": args.devices_per_round,
        "partition": "dirichlet(0.3)",
        "attack": "20% of devices, sign-flipped deltas scaled 10x",
        "wall_seconds": time.perf_counter() - started,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(accuracy, poison, args)
    (args.out / "results.md").write_text(markdown)
    print(markdown)


def to_markdown(
    accuracy: list[dict[str, Any]], poison: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    """The README tables."""
    by = {(r["strategy"], r["attack"]): r for r in accuracy}
    clean = by[("fedavg", "none")]
    lines = [
        f"MNIST, Dirichlet(0.3), 100 devices, {args.devices_per_round} per round, "
        f"{args.rounds} rounds, {args.model}, preset {args.preset}, seed {args.seed}; "
        "attack: 20% of devices send sign-flipped deltas scaled 10x",
        "",
        f"| strategy | no attack | under attack | under attack vs attack-free FedAvg (points) "
        f"| under attack, mean of last {TAIL_ROUNDS} rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for strategy in ["fedavg", *ROBUST]:
        ok, bad = by[(strategy, "none")], by[(strategy, "sign-flip")]
        diff = 100 * (bad["final_accuracy"] - clean["final_accuracy"])
        lines.append(
            f"| {strategy} | {100 * ok['final_accuracy']:.2f}% | "
            f"{100 * bad['final_accuracy']:.2f}% | {diff:+.2f} | "
            f"{100 * bad['tail_accuracy']:.2f}% |"
        )
    lines += [
        "",
        "| strategy | NaN updates rejected | Inf updates rejected | model finite | reason |",
        "|---|---:|---:|---|---|",
    ]
    by_poison = {(r["strategy"], r["attack"]): r for r in poison}
    for strategy in sorted({r["strategy"] for r in poison}):
        nan, inf = by_poison[(strategy, "nan")], by_poison[(strategy, "inf")]
        finite = nan["model_finite"] and inf["model_finite"]
        reason = (nan["rejection_reasons"] or ["-"])[0]
        lines.append(
            f"| {strategy} | {nan['rejected']} | {inf['rejected']} | {'yes' if finite else 'NO'} "
            f"| {reason} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
