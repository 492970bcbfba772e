"""The compression matrix's report: each row's figures and verdict, the table, the plot.

``compression_matrix.py`` runs the federations; this reads what they wrote.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compression_matrix import Row

TAIL_ROUNDS = 10
"""Accuracy is compared as the mean over the last this many rounds."""
TARGET_SHARE = 0.95
"""Bytes to target: until a preset first reaches this share of FP32's final accuracy."""
UPLINK_TARGET, DOWNLINK_TARGET, POINTS_TARGET = 100.0, 10.0, 1.0


def last_window_gain(runs: list[dict[str, Any]]) -> float:
    """FP32's gain, in points, between its last two 10-round windows (mean over the runs)."""
    gains = [
        statistics.fmean(r["accuracy"] for r in run["rounds"][-TAIL_ROUNDS:])
        - statistics.fmean(r["accuracy"] for r in run["rounds"][-2 * TAIL_ROUNDS : -TAIL_ROUNDS])
        for run in runs
    ]
    return 100 * statistics.fmean(gains)


def row_report(
    row: Row, runs: dict[str, list[dict[str, Any]]], rounds: int, test_samples: int
) -> dict[str, Any]:
    """Means over the seeds, the bytes to 95% of FP32's final accuracy, and the verdict;
    ``test_samples`` is the size of the test set every round's accuracy is measured on."""
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
    report["per_seed_tail_diff_points"] = [
        100 * (edge - fp)
        for edge, fp in zip(
            report["edge"]["per_seed_tail"], report["fp32"]["per_seed_tail"], strict=True
        )
    ]
    report["test_samples"] = test_samples
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


def to_markdown(result: dict[str, Any], rounds_rule: str) -> str:
    """The table, the heart-disease comparison and ``rounds_rule`` with each row's check."""
    seeds = " ".join(map(str, result["seeds"]))
    lines = [
        f"Edge preset against FP32 FedAvg, seeds {seeds}; accuracy is the mean over seeds; "
        f"'last 10' is the mean over the last {TAIL_ROUNDS} rounds. Bytes to target: what each "
        f"preset sent each way until it first reached {100 * TARGET_SHARE:.0f}% of FP32's "
        "final accuracy (mean over the seeds that reached it). Uplink and downlink: how many "
        "times fewer bytes than FP32 over the whole run.",
        "",
        "| row | rounds | test samples | FP32 final | FP32 last 10 | edge final | edge last 10 | "
        "difference, last 10 (points) | per seed | uplink | downlink | "
        "FP32 to target, up / down | edge to target, up / down | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        fp32, edge = row["fp32"], row["edge"]
        verdict = "met" if not row["misses"] else "missed: " + "; ".join(row["misses"])
        if row["why"]:
            verdict += f" ({row['why']})"
        per_seed = ", ".join(f"{diff:+.2f}" for diff in row["per_seed_tail_diff_points"])
        lines.append(
            f"| {row['title']} | {row['rounds']} | {row['test_samples']:,} | "
            f"{100 * fp32['final_accuracy']:.2f}% | "
            f"{100 * fp32['tail_accuracy']:.2f}% | {100 * edge['final_accuracy']:.2f}% | "
            f"{100 * edge['tail_accuracy']:.2f}% | {row['tail_diff_points']:+.2f} | {per_seed} | "
            f"{row['uplink_ratio']:.0f}x | {row['downlink_ratio']:.1f}x | "
            f"{_to_target(fp32)} | {_to_target(edge, fp32)} | {verdict} |"
        )
    coarse = [row for row in result["rows"] if 100 / row["test_samples"] > POINTS_TARGET]
    if coarse:
        lines += [
            "",
            "Too few test samples to resolve the accuracy target: "
            + "; ".join(
                f"{row['title']}: {row['test_samples']}, so one sample is "
                f"{100 / row['test_samples']:.2f} points, more than the {POINTS_TARGET:g}-point "
                "target, and its difference says little either way"
                for row in coarse
            )
            + ".",
        ]
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
        rounds_rule
        + " FP32's gain between its last two 10-round windows, in points: "
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
