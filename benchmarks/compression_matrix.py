"""Benchmark matrix: the edge preset against FP32 FedAvg on six tasks, three seeds each.

Every row runs both presets on the dataset's derived defaults (``stamen.config.derived``:
fleet, devices per round, batch, local epochs; nothing set by hand for a dataset) with the
textbook fleet (``fleet.preset = ideal``: this compares compression, not hardware), for the
row's rounds. For each row it reports final accuracy, the mean over the last 10 rounds, the
uplink and downlink byte ratios, and the bytes each way each preset sent until it first
reached 95% of FP32's final accuracy; and whether the row meets the targets: uplink at
least 100x and downlink at least 10x smaller, the edge preset within 1 point of FP32
(last-10 mean, averaged over the seeds).

Rounds: each row runs until FP32 FedAvg has plateaued, by one rule. It starts from the rounds
in which every device takes part about 10 times (``10 * num_devices / devices_per_round``, at
least 40), runs FP32 there, and adds 20 rounds at a time while FP32's gain between its last
two 10-round windows (mean over the seeds) is above 0.5 points, up to 150; the edge preset
then runs for the same rounds. The report shows each row's final gain.

Runs are resumable (a finished run is skipped), at most two at a time::

    nice -n 10 .venv/bin/python benchmarks/compression_matrix.py --jobs 2
    .venv/bin/python benchmarks/compression_matrix.py --report-only

Results: ``benchmarks/results/compression_matrix.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("fp32", "edge")
TAIL_ROUNDS = 10
TARGET_SHARE = 0.95
UPLINK_TARGET, DOWNLINK_TARGET, POINTS_TARGET = 100.0, 10.0, 1.0
PARTICIPATIONS, MIN_ROUNDS, MAX_ROUNDS = 10, 40, 150
PLATEAU_POINTS, EXTRA_ROUNDS = 0.5, 20


@dataclass(frozen=True)
class Row:
    """One task of the matrix."""

    name: str
    title: str
    overrides: dict[str, Any]
    why: str = ""
    """Why the row misses a target, where it does (filled in from the measured runs)."""
    extra: dict[str, Any] = field(default_factory=dict)


ROWS = (
    Row(
        "mnist-dir0.3-lenet",
        "MNIST, Dirichlet(0.3), LeNet",
        {"dataset": "mnist", "partition": "dirichlet", "alpha": 0.3, "model": "lenet"},
    ),
    Row(
        "mnist-dir0.1-lenet",
        "MNIST, Dirichlet(0.1), LeNet",
        {"dataset": "mnist", "partition": "dirichlet", "alpha": 0.1, "model": "lenet"},
        why="one or two classes a device: each device's held-back error feedback reaches the "
        "model only when the device is next sampled, about 10 rounds later (per seed: -0.84, "
        "-1.27 and -1.29 points)",
    ),
    Row(
        "mnist-dir0.3-mobilenet",
        "MNIST, Dirichlet(0.3), MobileNet",
        {"dataset": "mnist", "partition": "dirichlet", "alpha": 0.3, "model": "mobilenet"},
        why="the uplink's top-3% sign code: on seed 0, the preset with every update sent "
        "dense ends -0.50 points and without QAT -3.48 (benchmarks/mobilenet_ablation.py)",
    ),
    Row("watch-subject-mlp", "Watch IMU, one device per subject, MLP", {"dataset": "watch"}),
    Row(
        "heart-hospital-mlp",
        "Heart disease, one device per hospital, MLP",
        {"dataset": "heart-disease"},
    ),
    Row(
        "spoken-digits-mlp",
        "Spoken digits (MFCC), Dirichlet(0.3), MLP",
        {"dataset": "spoken-digits"},
        why="by 0.05: the top-3% uplink is still converging where FP32 has plateaued (per "
        "seed: -0.82, -1.03 and -1.30 points)",
    ),
)


def row_rounds(row: Row) -> int:
    """The row's first candidate rounds: about 10 participations per device, 40 to 150."""
    from stamen.config import load_config

    federation = load_config(overrides=row.overrides).federation
    rounds = PARTICIPATIONS * federation.num_devices / federation.devices_per_round
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, 10 * math.ceil(rounds / 10))))


def last_window_gain(runs: list[dict[str, Any]]) -> float:
    """FP32's gain, in points, between its last two 10-round windows (mean over the runs)."""
    gains = [
        statistics.fmean(r["accuracy"] for r in run["rounds"][-TAIL_ROUNDS:])
        - statistics.fmean(r["accuracy"] for r in run["rounds"][-2 * TAIL_ROUNDS : -TAIL_ROUNDS])
        for run in runs
    ]
    return 100 * statistics.fmean(gains)


def plateau_rounds(
    row: Row, seeds: list[int], out: Path, pool: ProcessPoolExecutor | None
) -> int | None:
    """The row's rounds by the plateau rule, running FP32 where ``pool`` is given (else only
    reading finished runs; ``None`` when they do not settle it). A run folder holds its
    latest run: FP32 runs already longer than a candidate mean the rule went past it."""
    rounds = row_rounds(row)
    while True:
        paths = [run_dir(out, row, "fp32", seed) for seed in seeds]
        done = [run_rounds(path) for path in paths]
        if all(found is not None and found > rounds for found in done) and rounds < MAX_ROUNDS:
            rounds = min(MAX_ROUNDS, rounds + EXTRA_ROUNDS)
            continue
        missing = [seed for seed, found in zip(seeds, done, strict=True) if found != rounds]
        if missing:
            if pool is None:
                return None
            for future in [pool.submit(run_one, row, "fp32", s, rounds, out) for s in missing]:
                print(future.result(), flush=True)
        gain = last_window_gain([read_run(path) for path in paths])
        if gain <= PLATEAU_POINTS or rounds >= MAX_ROUNDS:
            return rounds
        print(
            f"{row.name}: FP32 gained {gain:+.2f} points in its last window at {rounds} "
            f"rounds; {rounds + EXTRA_ROUNDS} next",
            flush=True,
        )
        rounds = min(MAX_ROUNDS, rounds + EXTRA_ROUNDS)


def run_dir(out: Path, row: Row, preset: str, seed: int) -> Path:
    return out / row.name / f"{preset}-seed{seed}"


def run_rounds(path: Path) -> int | None:
    """The rounds of the run that finished in ``path`` (``None``: none did)."""
    summary = path / "summary.json"
    if not summary.is_file():
        return None
    rounds = json.loads(summary.read_text()).get("rounds")
    return rounds if isinstance(rounds, int) else None


def finished(path: Path, rounds: int) -> bool:
    """Whether a run of ``rounds`` rounds finished in ``path`` (so it is skipped)."""
    return run_rounds(path) == rounds


def run_one(row: Row, preset: str, seed: int, rounds: int, out: Path) -> str:
    """One federation, in a worker process with one torch thread."""
    import torch

    from stamen.config import load_config
    from stamen.launch import simulate
    from stamen.server import ResultsWriter

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("stamen").setLevel(logging.ERROR)
    overrides = {
        **row.overrides,
        "preset": preset,
        "rounds": rounds,
        "seed": seed,
        "fleet.preset": "ideal",
        "federation.workers": 1,
    }
    started = time.perf_counter()
    simulate(load_config(overrides=overrides), ResultsWriter(run_dir(out, row, preset, seed)))
    return f"{row.name} {preset} seed {seed}: {time.perf_counter() - started:.0f} s"


def read_run(path: Path) -> dict[str, Any]:
    summary = json.loads((path / "summary.json").read_text())
    rounds = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "rounds": rounds}


def row_report(row: Row, runs: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    """Means over the seeds, the bytes to 95% of FP32's final accuracy, and the verdict."""
    from stamen.contract import bytes_to_accuracy

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    def tail(run: dict[str, Any]) -> float:
        return mean([r["accuracy"] for r in run["rounds"][-TAIL_ROUNDS:]])

    fp32 = runs["fp32"]
    target = TARGET_SHARE * mean([r["summary"]["final_accuracy"] for r in fp32])
    report: dict[str, Any] = {"name": row.name, "title": row.title, "rounds": rounds}
    report["seeds"] = len(fp32)
    report["target_accuracy"] = target
    for preset, group in runs.items():
        reached = [bytes_to_accuracy(run["rounds"], target) for run in group]
        hit = [found for found in reached if found is not None]
        report[preset] = {
            "final_accuracy": mean([r["summary"]["final_accuracy"] for r in group]),
            "tail_accuracy": mean([tail(r) for r in group]),
            "uplink_bytes": mean([r["summary"]["uplink_bytes"] for r in group]),
            "downlink_bytes": mean([r["summary"]["downlink_bytes"] for r in group]),
            "seeds_reaching_target": len(hit),
            "uplink_bytes_to_target": mean([h["uplink_bytes"] for h in hit]) if hit else None,
            "downlink_bytes_to_target": mean([h["downlink_bytes"] for h in hit]) if hit else None,
            "rounds_to_target": mean([h["round"] for h in hit]) if hit else None,
            "per_seed_final": [r["summary"]["final_accuracy"] for r in group],
            "per_seed_tail": [tail(r) for r in group],
        }
    report["fp32_last_window_gain_points"] = last_window_gain(fp32)
    report["tail_diff_points"] = 100 * (
        report["edge"]["tail_accuracy"] - report["fp32"]["tail_accuracy"]
    )
    report["final_diff_points"] = 100 * (
        report["edge"]["final_accuracy"] - report["fp32"]["final_accuracy"]
    )
    report["uplink_ratio"] = report["fp32"]["uplink_bytes"] / report["edge"]["uplink_bytes"]
    report["downlink_ratio"] = report["fp32"]["downlink_bytes"] / report["edge"]["downlink_bytes"]
    misses = []
    if report["uplink_ratio"] < UPLINK_TARGET:
        misses.append(f"uplink {report['uplink_ratio']:.0f}x < {UPLINK_TARGET:.0f}x")
    if report["downlink_ratio"] < DOWNLINK_TARGET:
        misses.append(f"downlink {report['downlink_ratio']:.1f}x < {DOWNLINK_TARGET:.0f}x")
    if report["tail_diff_points"] < -POINTS_TARGET:
        misses.append(f"accuracy {report['tail_diff_points']:+.2f} points")
    report["misses"] = misses
    report["why"] = row.why if misses else ""
    return report


def heart_pooled(rounds: int, seeds: list[int]) -> dict[str, Any] | None:
    """Pooled training of the heart-disease row's model (``benchmarks/heart_disease.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from heart_disease import pooled_baseline

    from stamen.config import load_config

    values = []
    for seed in seeds:
        config = load_config(
            overrides={"preset": "fp32", "dataset": "heart-disease", "rounds": rounds, "seed": seed}
        )
        values.append(pooled_baseline(config))
    return {"pooled_accuracy": statistics.fmean(values), "per_seed": values}


def to_markdown(result: dict[str, Any]) -> str:
    seeds = " ".join(map(str, result["seeds"]))
    lines = [
        f"Edge preset against FP32 FedAvg, seeds {seeds}; accuracy is the mean over seeds; "
        f"'last 10' is the mean over the last {TAIL_ROUNDS} rounds. Bytes to target: what each "
        f"preset sent each way until it first reached {100 * TARGET_SHARE:.0f}% of FP32's "
        "final accuracy (mean over the seeds that reached it). Uplink and downlink: how many "
        "times fewer bytes than FP32 over the whole run.",
        "",
        "| row | rounds | FP32 final | FP32 last 10 | edge final | edge last 10 | difference, "
        "last 10 (points) | uplink | downlink | FP32 to target, up / down | "
        "edge to target, up / down | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        fp32, edge = row["fp32"], row["edge"]
        verdict = "met" if not row["misses"] else "missed: " + "; ".join(row["misses"])
        if row["why"]:
            verdict += f" ({row['why']})"
        lines.append(
            f"| {row['title']} | {row['rounds']} | {100 * fp32['final_accuracy']:.2f}% | "
            f"{100 * fp32['tail_accuracy']:.2f}% | {100 * edge['final_accuracy']:.2f}% | "
            f"{100 * edge['tail_accuracy']:.2f}% | {row['tail_diff_points']:+.2f} | "
            f"{row['uplink_ratio']:.0f}x | {row['downlink_ratio']:.1f}x | "
            f"{_to_target(fp32)} | {_to_target(edge, fp32)} | {verdict} |"
        )
    pooled = result.get("heart_pooled")
    if pooled:
        heart = next(r for r in result["rows"] if r["name"].startswith("heart"))
        lines += [
            "",
            "Heart disease, as FLamby compares it: pooled training of the same MLP on the union "
            "of the four hospitals' training splits, for as many epochs as each hospital trains "
            f"in the federation: {100 * pooled['pooled_accuracy']:.2f}% (mean over the seeds), "
            f"beside FP32 FedAvg's {100 * heart['fp32']['final_accuracy']:.2f}% and the edge "
            f"preset's {100 * heart['edge']['final_accuracy']:.2f}%.",
        ]
    lines += [
        "",
        "Rounds: from 10 participations per device (10 x devices / devices per round, at "
        f"least {MIN_ROUNDS}), {EXTRA_ROUNDS} more at a time while FP32 gains more than "
        f"{PLATEAU_POINTS} points between its last two 10-round windows (at most {MAX_ROUNDS}). "
        "FP32's gain between its last two 10-round windows, in points: "
        + ", ".join(
            f"{row['name']} {row['fp32_last_window_gain_points']:+.2f}" for row in result["rows"]
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _to_target(group: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """``up / down`` bytes to the target, and how many times less than ``reference`` each."""
    if group["uplink_bytes_to_target"] is None:
        return "not reached"
    up, down = group["uplink_bytes_to_target"], group["downlink_bytes_to_target"]
    text = f"{_size(up)} / {_size(down)}"
    if reference is not None and reference["uplink_bytes_to_target"] is not None:
        text += (
            f" ({reference['uplink_bytes_to_target'] / up:.0f}x / "
            f"{reference['downlink_bytes_to_target'] / down:.1f}x less)"
        )
    return text


def _size(count: float) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 1e6 else f"{count / 1e3:.1f} KB"


def plot(
    result: dict[str, Any], curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path
) -> None:
    """Accuracy against the bytes sent both ways, one panel per row, seed 0 of each preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    columns = 3
    figure, axes = plt.subplots(
        math.ceil(len(rows) / columns), columns, figsize=(15, 4.2 * math.ceil(len(rows) / columns))
    )
    for axis, row in zip(axes.ravel(), rows, strict=False):
        for preset, style in (("fp32", "tab:grey"), ("edge", "tab:blue")):
            rounds = curves[row["name"]][preset]
            sent, total = [], 0
            for record in rounds:
                total += record["uplink_bytes"] + record["downlink_bytes"]
                sent.append(total / 1e6)
            axis.plot(sent, [100 * r["accuracy"] for r in rounds], color=style, label=preset)
        axis.axhline(100 * row["target_accuracy"], color="black", linestyle=":", linewidth=1)
        axis.set(
            xscale="log",
            title=row["title"],
            xlabel="MB sent, uplink + downlink",
            ylabel="accuracy (%)",
        )
        low = 100 * row["target_accuracy"] - 15
        axis.set_ylim(max(0, low), 100)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    for axis in axes.ravel()[len(rows) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", nargs="+", default=[row.name for row in ROWS], choices=[row.name for row in ROWS]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (at most 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/compression-matrix"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the report from the finished runs in --out",
    )
    args = parser.parse_args()
    jobs = max(1, min(2, args.jobs))
    rows = [row for row in ROWS if row.name in args.rows]
    # The cheap rows first, so a stopped matrix has the most rows; MobileNet's last.
    rows.sort(key=lambda row: row_rounds(row) * ("mobilenet" in row.name))
    rounds: dict[str, int | None] = {}
    if args.report_only:
        rounds = {row.name: plateau_rounds(row, args.seeds, args.out, None) for row in rows}
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rounds = {row.name: plateau_rounds(row, args.seeds, args.out, pool) for row in rows}
            todo = [
                (row, seed)
                for row in rows
                for seed in args.seeds
                if not finished(run_dir(args.out, row, "edge", seed), rounds[row.name] or 0)
            ]
            print(f"{len(todo)} edge runs to do, {jobs} at a time", flush=True)
            futures = [
                pool.submit(run_one, r, "edge", s, rounds[r.name] or 0, args.out) for r, s in todo
            ]
            for number, future in enumerate(as_completed(futures), start=1):
                print(f"[{number}/{len(todo)}] {future.result()}", flush=True)
    reports, curves = [], {}
    for row in rows:
        settled = rounds[row.name]
        if settled is None:
            print(f"{row.name}: FP32's runs do not settle its rounds; left out of the report")
            continue
        paths = {p: [run_dir(args.out, row, p, s) for s in args.seeds] for p in PRESETS}
        if not all(finished(path, settled) for group in paths.values() for path in group):
            print(f"{row.name}: not every run has finished; left out of the report")
            continue
        runs = {preset: [read_run(path) for path in group] for preset, group in paths.items()}
        reports.append(row_report(row, runs, settled))
        curves[row.name] = {preset: group[0]["rounds"] for preset, group in runs.items()}
    result: dict[str, Any] = {"seeds": args.seeds, "rows": reports}
    if any(r["name"].startswith("heart") for r in reports):
        heart = next(r for r in reports if r["name"].startswith("heart"))
        result["heart_pooled"] = heart_pooled(heart["rounds"], args.seeds)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "compression_matrix.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.results / "compression_matrix.md").write_text(markdown)
    if reports:
        plot(result, curves, args.results / "compression_matrix.png")
    print(markdown)


if __name__ == "__main__":
    main()
