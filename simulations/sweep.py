"""Sweeps: a small grid of settings and seeds, one table and one plot.

A sweep axis is ``KEY=V1,V2,...`` with any config key or alias (``preset``,
``federation.seed``, ``uplink.topk_ratio`` ...). The runs are the cartesian
product of the axes. Results are grouped by everything but the seed, so
seeds become a mean and a spread.

The headline is bytes to accuracy: the target is :data:`TARGET_SHARE` of the reference
setting's final accuracy (the ``preset=fp32`` group where the sweep has one, else the most
accurate), and each setting reports the bytes each way its runs sent until they first
reached it, beside the reference's.

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
from stamen.contract import bytes_to_accuracy
from stamen.core.errors import ConfigError

SEED_KEY = "federation.seed"
TARGET_SHARE = 0.95
"""Bytes to accuracy are measured at this share of the reference setting's final accuracy."""


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
    downlink_compression: float | None = None
    target_accuracy: float | None = None
    """:data:`TARGET_SHARE` of the reference setting's mean final accuracy."""
    reached: int = 0
    """Seeds that reached the target."""
    uplink_to_target: float | None = None
    """Mean bytes sent uplink until the target was first reached (over the seeds that did)."""
    downlink_to_target: float | None = None
    reference: bool = False
    """This is the setting the target and the byte ratios refer to."""


Run = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]
"""One run: its swept overrides, its ``summary.json`` and its ``metrics.jsonl`` rounds."""


def summarize_runs(runs: list[Run]) -> list[SweepRow]:
    """Group runs by everything but the seed, and measure each group's bytes to the target.

    Examples:
        >>> def run(preset, accuracy, kb):
        ...     rounds = [{"round": 1, "accuracy": accuracy, "uplink_bytes": kb * 1000,
        ...                "downlink_bytes": kb * 1000}]
        ...     summary = {"final_accuracy": accuracy, "uplink_compression": 1.0,
        ...                "simulated_seconds": 1.0, "wall_seconds": 1.0}
        ...     return {"preset": preset}, summary, rounds
        >>> rows = summarize_runs([run("fp32", 0.9, 100), run("edge", 0.89, 1)])
        >>> [(r.setting, r.reference, r.reached, r.uplink_to_target) for r in rows]
        [('preset=fp32', True, 1, 100000.0), ('preset=edge', False, 1, 1000.0)]
    """
    groups: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    for overrides, summary, rounds in runs:
        label = run_label({k: v for k, v in overrides.items() if k != SEED_KEY})
        groups.setdefault(label or "default", []).append((summary, rounds))
    means = {
        name: statistics.fmean(s["final_accuracy"] or 0.0 for s, _ in members)
        for name, members in groups.items()
    }
    reference = next((name for name in groups if "preset=fp32" in name.split("_")), None)
    if reference is None:
        reference = max(means, key=lambda name: means[name])
    target = TARGET_SHARE * means[reference]
    rows = []
    for name, members in groups.items():
        summaries = [summary for summary, _ in members]
        accuracies = [s["final_accuracy"] or 0.0 for s in summaries]
        reached = [found for _, rounds in members if (found := bytes_to_accuracy(rounds, target))]
        rows.append(
            SweepRow(
                setting=name,
                seeds=len(summaries),
                accuracy_mean=statistics.fmean(accuracies),
                accuracy_std=statistics.pstdev(accuracies),
                uplink_compression=_mean_of(summaries, "uplink_compression"),
                simulated_seconds=statistics.fmean(s["simulated_seconds"] for s in summaries),
                wall_seconds=statistics.fmean(s["wall_seconds"] for s in summaries),
                downlink_compression=_mean_of(summaries, "downlink_compression"),
                target_accuracy=target,
                reached=len(reached),
                uplink_to_target=_mean_bytes(reached, "uplink_bytes"),
                downlink_to_target=_mean_bytes(reached, "downlink_bytes"),
                reference=name == reference,
            )
        )
    return rows


def _mean_of(summaries: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in summaries if s.get(key)]
    return statistics.fmean(values) if values else None


def _mean_bytes(reached: list[dict[str, int]], key: str) -> float | None:
    return statistics.fmean(found[key] for found in reached) if reached else None


def write_sweep(
    out_dir: Path, rows: list[SweepRow], curves: dict[str, list[dict[str, Any]]]
) -> None:
    """Write ``sweep.csv`` and ``sweep.png``: accuracy per round and against the bytes sent
    both ways, one line per run (``curves``: each run's ``metrics.jsonl`` rounds)."""
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
                "downlink_compression",
                "target_accuracy",
                "seeds_reaching_target",
                "uplink_bytes_to_target",
                "downlink_bytes_to_target",
                "reference",
            ]
        )
        for row in rows:
            writer.writerow(
                [
                    row.setting,
                    row.seeds,
                    f"{row.accuracy_mean:.4f}",
                    f"{row.accuracy_std:.4f}",
                    _number(row.uplink_compression, ".2f"),
                    f"{row.simulated_seconds:.1f}",
                    f"{row.wall_seconds:.1f}",
                    _number(row.downlink_compression, ".2f"),
                    _number(row.target_accuracy, ".4f"),
                    row.reached,
                    _number(row.uplink_to_target, ".0f"),
                    _number(row.downlink_to_target, ".0f"),
                    int(row.reference),
                ]
            )
    _plot(out_dir / "sweep.png", rows, curves)


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _plot(path: Path, rows: list[SweepRow], curves: dict[str, list[dict[str, Any]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is a convenience; the CSV has the numbers
        return
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.2))
    for label, rounds in curves.items():
        accuracy = [100 * r["accuracy"] for r in rounds]
        (line,) = left.plot(range(1, len(rounds) + 1), accuracy, label=label)
        sent = [r["uplink_bytes"] + r["downlink_bytes"] for r in rounds]
        middle.plot([b / 1e6 for b in itertools.accumulate(sent)], accuracy, color=line.get_color())
    left.set(xlabel="round", ylabel="test accuracy (%)", title="Accuracy per round")
    middle.set(
        xlabel="MB sent, uplink + downlink (log)",
        ylabel="test accuracy (%)",
        title="Accuracy against bytes",
        xscale="log",
    )
    target = next((row.target_accuracy for row in rows if row.target_accuracy), None)
    if target is not None:
        middle.axhline(100 * target, color="grey", linestyle=":", label="target")
    for axis in (left, middle):
        axis.grid(alpha=0.3)
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
