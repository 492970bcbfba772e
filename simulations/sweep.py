"""Sweeps: a small grid of settings and seeds, one table and one plot.

A sweep axis is ``KEY=V1,V2,...`` with any config key or alias (``preset``,
``federation.seed``, ``uplink.topk_ratio`` ...). The runs are the cartesian
product of the axes. Results are grouped by everything but the seed, so
seeds become a mean and a spread.

Examples:
    >>> axes = [parse_axis("preset=edge,fp32"), parse_axis("seed=0,1")]
    >>> [run_label(r) for r in expand(axes)]
    ['preset=edge_seed=0', 'preset=edge_seed=1', 'preset=fp32_seed=0', 'preset=fp32_seed=1']
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stamen.config import canonical_key
from stamen.core.errors import ConfigError

SEED_KEY = "federation.seed"


@dataclass(frozen=True)
class SweepAxis:
    """One swept key and its values."""

    key: str
    values: tuple[Any, ...]


def parse_axis(text: str) -> SweepAxis:
    """Parse ``KEY=V1,V2``; each value is read as a TOML literal, else as a string."""
    key, sep, raw = text.partition("=")
    values = tuple(_literal(v.strip()) for v in raw.split(",") if v.strip())
    if not sep or not key.strip() or not values:
        raise ConfigError(f"--sweep expects KEY=V1,V2,...; got {text!r}")
    return SweepAxis(canonical_key(key.strip()), values)


def expand(axes: Sequence[SweepAxis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, as config overrides."""
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError("each --sweep key may appear once")
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(axis.values for axis in axes))
    ]


def run_label(overrides: dict[str, Any]) -> str:
    """A short, file-name-safe label of one run's swept values."""
    parts = [f"{key.rpartition('.')[2]}={value}" for key, value in overrides.items()]
    return "_".join(parts).replace("/", "-").replace(" ", "")


@dataclass(frozen=True)
class SweepRow:
    """One setting of the sweep, over its seeds."""

    setting: str
    seeds: int
    accuracy_mean: float
    accuracy_std: float
    uplink_compression: float | None
    simulated_seconds: float
    wall_seconds: float


def summarize_runs(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[SweepRow]:
    """Group ``(overrides, summary)`` pairs by everything but the seed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for overrides, summary in runs:
        label = run_label({k: v for k, v in overrides.items() if k != SEED_KEY})
        groups.setdefault(label or "default", []).append(summary)
    rows = []
    for name, summaries in groups.items():
        accuracies = [s["final_accuracy"] or 0.0 for s in summaries]
        ratios = [s["uplink_compression"] for s in summaries if s.get("uplink_compression")]
        rows.append(
            SweepRow(
                setting=name,
                seeds=len(summaries),
                accuracy_mean=statistics.fmean(accuracies),
                accuracy_std=statistics.pstdev(accuracies),
                uplink_compression=statistics.fmean(ratios) if ratios else None,
                simulated_seconds=statistics.fmean(s["simulated_seconds"] for s in summaries),
                wall_seconds=statistics.fmean(s["wall_seconds"] for s in summaries),
            )
        )
    return rows


def write_sweep(out_dir: Path, rows: list[SweepRow], curves: dict[str, list[float]]) -> None:
    """Write ``sweep.csv`` and ``sweep.png`` (accuracy per round, one line per run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "sweep.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "setting",
                "seeds",
                "accuracy_mean",
                "accuracy_std",
                "uplink_compression",
                "simulated_seconds",
                "wall_seconds",
            ]
        )
        for row in rows:
            writer.writerow(
                [
                    row.setting,
                    row.seeds,
                    f"{row.accuracy_mean:.4f}",
                    f"{row.accuracy_std:.4f}",
                    "" if row.uplink_compression is None else f"{row.uplink_compression:.2f}",
                    f"{row.simulated_seconds:.1f}",
                    f"{row.wall_seconds:.1f}",
                ]
            )
    _plot(out_dir / "sweep.png", rows, curves)


def _plot(path: Path, rows: list[SweepRow], curves: dict[str, list[float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is a convenience; the CSV has the numbers
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, accuracies in curves.items():
        left.plot(range(1, len(accuracies) + 1), [100 * a for a in accuracies], label=label)
    left.set(xlabel="round", ylabel="test accuracy (%)", title="Accuracy per round")
    left.grid(alpha=0.3)
    if len(curves) <= 12:
        left.legend(fontsize="small")
    names = [row.setting for row in rows]
    means = [100 * row.accuracy_mean for row in rows]
    spreads = [100 * row.accuracy_std for row in rows]
    right.barh(names, means, xerr=spreads, color="tab:blue", alpha=0.8)
    low = min(means) - max(spreads, default=0.0) - 2 if means else 0
    right.set(
        xlabel="final accuracy (%), mean ± std over seeds",
        title="Final accuracy by setting",
        xlim=(max(0.0, math.floor(low)), 100),
    )
    right.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
