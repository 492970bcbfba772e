"""Benchmark: which part of the edge preset costs a matrix row its accuracy, one at a time.

Runs the edge preset on one row of the compression matrix (``compression_matrix.py``) with
one part changed at a time, for the row's rounds, beside the matrix's own FP32 and edge runs
of the same seeds (``runs/compression-matrix``, which must hold them):

- ``qat-off``: no quantization-aware training;
- ``pruning-off``: no pruning;
- ``uplink-fp32``: every update sent dense in float32 (no top-k, no sign code, no error
  feedback); QAT, pruning and the delta downlink as in the preset;
- ``tensor-scales``: the same top-k, with a sign scale per tensor instead of one for
  every kept value (``uplink.tensor_scales``);
- ``whole-vectors``: every 1-D tensor (biases, BatchNorm's affine weights and running
  statistics) sent whole each round, a bit an entry, outside the top-k
  (``uplink.whole_vectors``).

Runs are resumable (a finished run is skipped), two at a time. Writes
``preset_ablation_<row>.{json,md}`` into ``--results`` (``benchmarks/results``)::

    nice -n 10 .venv/bin/python benchmarks/preset_ablation.py            # MobileNet, seed 0
    nice -n 10 .venv/bin/python benchmarks/preset_ablation.py --row mnist-dir0.1-lenet \\
        --arms uplink-fp32 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from compression_matrix import (
    RESULTS,
    ROWS,
    Row,
    finished,
    plateau_rounds,
    read_run,
    run_dir,
    run_one,
)
from compression_report import TAIL_ROUNDS

CHANCE = 0.15
"""Below this accuracy (10 classes) a round counts as at chance."""
ARMS: dict[str, dict[str, Any]] = {
    "qat-off": {"qat.enabled": False},
    "pruning-off": {"pruning.target_sparsity": 0.0},
    "uplink-fp32": {
        "uplink.topk_ratio": 1.0,
        "uplink.values": "fp32",
        "uplink.error_feedback": False,
        "uplink.scope": "tensor",
        "uplink.lossless": "none",
    },
    "tensor-scales": {"uplink.tensor_scales": True},
    "whole-vectors": {"uplink.whole_vectors": True},
}


def arm_row(row: Row, arm: str) -> Row:
    """``row`` with the arm's overrides, run under its own name."""
    return replace(row, name=f"{row.name}-{arm}", overrides={**row.overrides, **ARMS[arm]})


def summary(paths: list[Path], reference: list[Path]) -> dict[str, Any]:
    """Means over the seeds' runs in ``paths``, and each seed's difference from ``reference``."""
    runs = [read_run(path) for path in paths]
    accuracy = [[r["accuracy"] for r in run["rounds"]] for run in runs]
    tails = [statistics.fmean(a[-TAIL_ROUNDS:]) for a in accuracy]
    reference_tails = [
        statistics.fmean([r["accuracy"] for r in read_run(path)["rounds"]][-TAIL_ROUNDS:])
        for path in reference
    ]
    return {
        "final_accuracy": statistics.fmean(a[-1] for a in accuracy),
        "tail_accuracy": statistics.fmean(tails),
        "per_seed_diff_points": [
            100 * (t - r) for t, r in zip(tails, reference_tails, strict=True)
        ],
        "lowest_in_second_half": statistics.fmean(min(a[len(a) // 2 :]) for a in accuracy),
        "rounds_at_chance_in_first_half": statistics.fmean(
            sum(x < CHANCE for x in a[: len(a) // 2]) for a in accuracy
        ),
        "highest_central_loss": max(r["loss"] for run in runs for r in run["rounds"]),
        "uplink_bytes": statistics.fmean(run["summary"]["uplink_bytes"] for run in runs),
    }


def to_markdown(row: Row, seeds: list[int], rounds: int, arms: dict[str, Any]) -> str:
    fp32 = arms["fp32 (matrix)"]
    chosen = [name.removeprefix("edge, ") for name in arms if name.startswith("edge, ")]
    command = f"python benchmarks/preset_ablation.py --row {row.name}"
    command += f" --seeds {' '.join(map(str, seeds))}"
    if chosen != list(ARMS):
        command += f" --arms {' '.join(chosen)}"
    lines = [
        f"{row.title}, seeds {' '.join(map(str, seeds))}, {rounds} rounds; means over the "
        f"seeds. Command: `{command}`.",
        "",
        "| arm | final | last 10 | vs FP32, last 10 (points) | per seed | lowest in the "
        "second half | rounds below 15% in the first half | highest central loss | "
        "uplink vs FP32 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, arm in arms.items():
        per_seed = ", ".join(f"{diff:+.2f}" for diff in arm["per_seed_diff_points"])
        lines.append(
            f"| {name} | {100 * arm['final_accuracy']:.2f}% | {100 * arm['tail_accuracy']:.2f}% "
            f"| {100 * (arm['tail_accuracy'] - fp32['tail_accuracy']):+.2f} | {per_seed} "
            f"| {100 * arm['lowest_in_second_half']:.2f}% "
            f"| {arm['rounds_at_chance_in_first_half']:.1f} | {arm['highest_central_loss']:.2f} "
            f"| {fp32['uplink_bytes'] / arm['uplink_bytes']:.0f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--row", default="mnist-dir0.3-mobilenet", choices=[row.name for row in ROWS]
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--matrix", type=Path, default=Path("runs/compression-matrix"))
    parser.add_argument("--out", type=Path, default=Path("runs/preset-ablation"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    row = next(row for row in ROWS if row.name == args.row)
    rounds = plateau_rounds(row, args.seeds, args.matrix, None)
    matrix = {p: [run_dir(args.matrix, row, p, s) for s in args.seeds] for p in ("fp32", "edge")}
    if rounds is None or not all(finished(p, rounds) for g in matrix.values() for p in g):
        raise SystemExit(
            f"{args.matrix} lacks the matrix's finished FP32 and edge runs of {row.name} for "
            f"seeds {args.seeds}: run benchmarks/compression_matrix.py --rows {row.name} first"
        )
    todo = [
        (arm, seed)
        for arm in args.arms
        for seed in args.seeds
        if not finished(run_dir(args.out, arm_row(row, arm), "edge", seed), rounds)
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(run_one, arm_row(row, arm), "edge", seed, rounds, args.out)
            for arm, seed in todo
        ]
        for future in futures:
            print(future.result(), flush=True)
    arms = {
        "fp32 (matrix)": summary(matrix["fp32"], matrix["fp32"]),
        "edge (matrix)": summary(matrix["edge"], matrix["fp32"]),
    }
    for arm in args.arms:
        paths = [run_dir(args.out, arm_row(row, arm), "edge", seed) for seed in args.seeds]
        arms[f"edge, {arm}"] = summary(paths, matrix["fp32"])
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"preset_ablation_{row.name}"
    result = {"row": row.name, "seeds": args.seeds, "rounds": rounds, "arms": arms}
    (args.results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(row, args.seeds, rounds, arms)
    (args.results / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
