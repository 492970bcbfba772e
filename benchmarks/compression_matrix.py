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

from compression_report import last_window_gain, plot, row_report, to_markdown

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("fp32", "edge")
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
        why="the uplink's top-3% sign code, about 0.7 of it: with every update sent dense in "
        "float32 and the rest of the preset, -0.45 points; pruning about 0.25 (without it, "
        "-0.89); QAT nothing measurable (without it, -1.10) (benchmarks/preset_ablation.py "
        "--row mnist-dir0.1-lenet, 3 seeds)",
    ),
    Row(
        "mnist-dir0.3-mobilenet",
        "MNIST, Dirichlet(0.3), MobileNet",
        {"dataset": "mnist", "partition": "dirichlet", "alpha": 0.3, "model": "mobilenet"},
        why="the uplink's top-3% sign code: on seed 0, the preset with every update sent "
        "dense ends -0.50 points and without QAT -3.48; its 1-D tensors sent whole halve the "
        "gap (-2.16) but need 50% more bytes, 87x (benchmarks/preset_ablation.py)",
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
        why="by 0.05, less than the seeds' spread: the uplink's top-3% sign code, about 0.9 "
        "of it (every update dense in float32, the rest of the preset: -0.14 points), QAT "
        "about 0.3 (without it, -0.76) (benchmarks/preset_ablation.py --row "
        "spoken-digits-mlp, 3 seeds)",
    ),
)


def row_rounds(row: Row) -> int:
    """The row's first candidate rounds: about 10 participations per device, 40 to 150."""
    from stamen.config import load_config

    federation = load_config(overrides=row.overrides).federation
    rounds = PARTICIPATIONS * federation.num_devices / federation.devices_per_round
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, 10 * math.ceil(rounds / 10))))


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


def test_samples(row: Row) -> int:
    """How many samples the row's central evaluation scores each round."""
    from stamen.data import load_dataset

    return int(load_dataset(row.overrides["dataset"]).y_test.size)


def read_run(path: Path) -> dict[str, Any]:
    summary = json.loads((path / "summary.json").read_text())
    rounds = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "rounds": rounds}


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
        reports.append(row_report(row, runs, settled, test_samples(row)))
        curves[row.name] = {preset: group[0]["rounds"] for preset, group in runs.items()}
    result: dict[str, Any] = {"seeds": args.seeds, "rows": reports}
    if any(r["name"].startswith("heart") for r in reports):
        heart = next(r for r in reports if r["name"].startswith("heart"))
        result["heart_pooled"] = heart_pooled(heart["rounds"], args.seeds)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "compression_matrix.json").write_text(json.dumps(result, indent=2) + "\n")
    rule = (
        "Rounds: from 10 participations per device (10 x devices / devices per round, at "
        f"least {MIN_ROUNDS}), {EXTRA_ROUNDS} more at a time while FP32 gains more than "
        f"{PLATEAU_POINTS} points between its last two 10-round windows (at most {MAX_ROUNDS})."
    )
    markdown = to_markdown(result, rule)
    (args.results / "compression_matrix.md").write_text(markdown)
    if reports:
        plot(result, curves, args.results / "compression_matrix.png")
    print(markdown)


if __name__ == "__main__":
    main()
