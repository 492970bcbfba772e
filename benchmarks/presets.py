"""Benchmark: ``--preset edge`` against ``--preset fp32`` on MNIST, in one run.

Dirichlet(0.3) over 100 devices, 10 per round, the same rounds and seeds for
both presets. Reports the accuracy difference and the uplink and downlink byte
ratios, writes ``results.json`` and ``results.md`` into ``--out``.

    python benchmarks/presets.py --rounds 60 --seeds 0 1 2 --out runs/benchmark-presets
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_one(preset: str, seed: int, rounds: int, dataset: str, out: Path) -> dict[str, Any]:
    """One federation in a worker process, one torch thread each."""
    import torch

    from stamen.config import load_config
    from stamen.launch import simulate
    from stamen.server import ResultsWriter

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = load_config(
        overrides={
            "preset": preset,
            "dataset": dataset,
            "num-devices": 100,
            "devices-per-round": 10,
            "rounds": rounds,
            "partition": "dirichlet",
            "alpha": 0.3,
            "seed": seed,
            # One worker per run (the runs themselves fill the cores), and the
            # textbook fleet: this benchmark compares compression, not hardware.
            "federation.workers": 1,
            "fleet.preset": "ideal",
        }
    )
    summary = simulate(config, ResultsWriter(out / f"{preset}-seed{seed}"))
    return {"preset": preset, "seed": seed, **{k: v for k, v in summary.items() if k != "config"}}


def main() -> None:
    """Run every (preset, seed) pair and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-presets"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Rebuild results.json and results.md from the runs already in --out.",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(preset, seed) for seed in args.seeds for preset in ("edge", "fp32")]
    if args.report_only:
        runs = [stored_run(args.out, preset, seed) for preset, seed in jobs]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(run_one, p, s, args.rounds, args.dataset, args.out) for p, s in jobs
            ]
            runs = [future.result() for future in futures]
    for run in runs:
        run["tail_accuracy"] = tail_accuracy(args.out / f"{run['preset']}-seed{run['seed']}")
    table = compare(runs)
    result = {
        "rounds": args.rounds,
        "seeds": args.seeds,
        "dataset": args.dataset,
        "num_devices": 100,
        "devices_per_round": 10,
        "partition": "dirichlet(0.3)",
        "wall_seconds": None if args.report_only else time.perf_counter() - started,
        "run_seconds": sum(run["wall_seconds"] for run in runs),
        "runs": runs,
        "comparison": table,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(table, args)
    (args.out / "results.md").write_text(markdown)
    print(markdown)


TAIL_ROUNDS = 10
"""Accuracy is also reported as the mean of the last rounds: one round is noisy non-IID."""


def stored_run(out: Path, preset: str, seed: int) -> dict[str, Any]:
    """A finished run's summary, read back from its results directory."""
    path = out / f"{preset}-seed{seed}" / "summary.json"
    if not path.is_file():
        raise SystemExit(f"no finished run at {path}; run without --report-only first")
    summary = json.loads(path.read_text())
    return {"preset": preset, "seed": seed, **{k: v for k, v in summary.items() if k != "config"}}


def tail_accuracy(run_dir: Path) -> float:
    """Mean central accuracy over the last ``TAIL_ROUNDS`` rounds of a run."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[-TAIL_ROUNDS:]
    return statistics.fmean(json.loads(line)["accuracy"] for line in lines)


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed and mean figures: accuracy difference and byte ratios."""
    by_key = {(r["preset"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    rows = []
    for seed in seeds:
        edge, fp32 = by_key[("edge", seed)], by_key[("fp32", seed)]
        rows.append(
            {
                "seed": seed,
                "edge_accuracy": edge["final_accuracy"],
                "fp32_accuracy": fp32["final_accuracy"],
                "accuracy_diff_points": 100 * (edge["final_accuracy"] - fp32["final_accuracy"]),
                "edge_tail_accuracy": edge["tail_accuracy"],
                "fp32_tail_accuracy": fp32["tail_accuracy"],
                "tail_diff_points": 100 * (edge["tail_accuracy"] - fp32["tail_accuracy"]),
                "uplink_ratio": fp32["uplink_bytes"] / edge["uplink_bytes"],
                "downlink_ratio": fp32["downlink_bytes"] / edge["downlink_bytes"],
                "edge_uplink_bytes": edge["uplink_bytes"],
                "fp32_uplink_bytes": fp32["uplink_bytes"],
                "edge_downlink_bytes": edge["downlink_bytes"],
                "fp32_downlink_bytes": fp32["downlink_bytes"],
            }
        )
    mean = {key: statistics.fmean(row[key] for row in rows) for key in rows[0] if key != "seed"}
    return {"per_seed": rows, "mean": mean}


def to_markdown(table: dict[str, Any], args: argparse.Namespace) -> str:
    """The README table."""
    lines = [
        f"MNIST, Dirichlet(0.3), 100 devices, 10 per round, {args.rounds} rounds, "
        f"seeds {' '.join(map(str, args.seeds))}",
        "",
        "| seed | fp32 accuracy | edge accuracy | difference (points) | "
        f"difference, mean of last {TAIL_ROUNDS} rounds | uplink ratio | downlink ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [*table["per_seed"], {"seed": "mean", **table["mean"]}]:
        lines.append(
            f"| {row['seed']} | {100 * row['fp32_accuracy']:.2f}% | "
            f"{100 * row['edge_accuracy']:.2f}% | {row['accuracy_diff_points']:+.2f} | "
            f"{row['tail_diff_points']:+.2f} | "
            f"{row['uplink_ratio']:.1f}x | {row['downlink_ratio']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
