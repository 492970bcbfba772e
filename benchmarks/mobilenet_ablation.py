"""Benchmark: which part of the edge preset costs MobileNet its accuracy, one part at a time.

The compression matrix's MobileNet row (MNIST, Dirichlet(0.3), 100 devices, 10 a round,
100 rounds, the ideal fleet) misses the 1-point target. This runs the edge preset on that
row with one part changed at a time, seed 0, beside the matrix's own FP32 and edge runs of
seed 0 (``runs/compression-matrix``, made by ``compression_matrix.py``):

- ``qat-off``: no quantization-aware training;
- ``uplink-fp32``: every update sent dense in float32 (no top-k, no sign code, no error
  feedback); QAT, pruning and the delta downlink as in the preset;
- ``tensor-scales``: the same top-k, with a sign scale per tensor instead of one for
  every kept value (``uplink.tensor_scales``);
- ``whole-vectors``: biases and BatchNorm's affine weights (every 1-D tensor) sent whole,
  a bit an entry, outside the top-k (``uplink.whole_vectors``).

Runs are resumable (a finished run is skipped), two at a time. Writes
``mobilenet_ablation.{json,md}`` into ``--results`` (``benchmarks/results``).

    nice -n 10 .venv/bin/python benchmarks/mobilenet_ablation.py
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from compression_matrix import RESULTS, ROWS, finished, read_run, run_dir, run_one
from compression_report import TAIL_ROUNDS

ROW = next(row for row in ROWS if row.name == "mnist-dir0.3-mobilenet")
ROUNDS, SEED = 100, 0
CHANCE = 0.15
"""Below this accuracy (10 classes) a round counts as at chance."""
ARMS: dict[str, dict[str, Any]] = {
    "qat-off": {"qat.enabled": False},
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


def arm_row(name: str) -> Any:
    """The MobileNet row with the arm's overrides, run under its own name."""
    from dataclasses import replace

    return replace(ROW, name=f"{ROW.name}-{name}", overrides={**ROW.overrides, **ARMS[name]})


def summary(path: Path) -> dict[str, Any]:
    run = read_run(path)
    accuracy = [r["accuracy"] for r in run["rounds"]]
    return {
        "final_accuracy": accuracy[-1],
        "tail_accuracy": statistics.fmean(accuracy[-TAIL_ROUNDS:]),
        "lowest_after_round_50": min(accuracy[50:]),
        "rounds_at_chance_in_first_50": sum(a < CHANCE for a in accuracy[:50]),
        "highest_central_loss": max(r["loss"] for r in run["rounds"]),
        "uplink_bytes": run["summary"]["uplink_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=Path("runs/compression-matrix"))
    parser.add_argument("--out", type=Path, default=Path("runs/mobilenet-ablation"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    todo = [a for a in ARMS if not finished(run_dir(args.out, arm_row(a), "edge", SEED), ROUNDS)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run_one, arm_row(a), "edge", SEED, ROUNDS, args.out) for a in todo]
        for future in futures:
            print(future.result(), flush=True)
    rows = {
        "fp32 (matrix)": summary(run_dir(args.matrix, ROW, "fp32", SEED)),
        "edge (matrix)": summary(run_dir(args.matrix, ROW, "edge", SEED)),
    }
    for arm in ARMS:
        rows[f"edge, {arm}"] = summary(run_dir(args.out, arm_row(arm), "edge", SEED))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "mobilenet_ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    fp32 = rows["fp32 (matrix)"]
    lines = [
        f"MobileNet, MNIST Dirichlet(0.3), seed {SEED}, {ROUNDS} rounds. Command: "
        "`python benchmarks/mobilenet_ablation.py`.",
        "",
        "| arm | final | last 10 | vs FP32, last 10 (points) | lowest after round 50 "
        "| rounds below 15% in the first 50 | highest central loss | uplink vs FP32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {100 * row['final_accuracy']:.2f}% | {100 * row['tail_accuracy']:.2f}% "
            f"| {100 * (row['tail_accuracy'] - fp32['tail_accuracy']):+.2f} "
            f"| {100 * row['lowest_after_round_50']:.2f}% "
            f"| {row['rounds_at_chance_in_first_50']} | {row['highest_central_loss']:.2f} "
            f"| {fp32['uplink_bytes'] / row['uplink_bytes']:.0f}x |"
        )
    (args.results / "mobilenet_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
