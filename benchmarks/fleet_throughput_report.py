"""The tables of ``fleet_throughput.py``: its runs, repeated and interleaved, as one row per
path, scale and build (the median updates per second with its range), with ratios of
medians against stock Flower at the same scale, against the same model trained one device at
a time, and against an earlier build (``--before``)."""

from __future__ import annotations

import statistics
from typing import Any

W1_PATHS = ("flower-ray", "stamen-ray", "stamen-local-fp32", "stamen-local-edge")
MODEL_PATHS = tuple(
    f"{model}-{form}"
    for model in ("mobilenet", "mlp")
    for form in ("together", "vmap", "fallback", "alone")
)
PATHS = W1_PATHS + MODEL_PATHS
"""Every path the benchmark runs: W1's, then each model's forms (``model-form``)."""


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per path, scale and build, over its repeats: the median updates per second
    with the lowest and highest, the median first round, the highest peak memory; a path
    whose every run failed keeps the first failure."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["path"], run["devices"], run.get("build", "this")), []).append(run)
    rows = []
    for group in groups.values():
        done = [run for run in group if "error" not in run and run["updates_per_second"]]
        if not done:
            rows.append(group[0])
            continue
        rates = [run["updates_per_second"] for run in done]
        rows.append(
            {
                **done[0],
                "runs": len(done),
                "failed_runs": len(group) - len(done),
                "updates_per_second": statistics.median(rates),
                "updates_per_second_range": [min(rates), max(rates)],
                "first_round_seconds": statistics.median(r["first_round_seconds"] for r in done),
                "peak_memory_mib": max(run["peak_memory_mib"] for run in done),
            }
        )
    return rows


def rate_cell(row: dict[str, Any]) -> str:
    """``median (lowest-highest)`` updates per second."""
    low, high = row.get("updates_per_second_range", [row["updates_per_second"]] * 2)
    spread = f" ({low:.0f}-{high:.0f})" if row.get("runs", 1) > 1 else ""
    return f"{row['updates_per_second']:.0f}{spread}"


def measured_cells(row: dict[str, Any], base: dict[str, Any] | None) -> str:
    """A row's updates/s, its ratio to ``base``'s, its first round and its peak memory."""
    ratio = (
        f"{row['updates_per_second'] / base['updates_per_second']:.1f}x"
        if base and base["updates_per_second"] and row["updates_per_second"]
        else "-"
    )
    return (
        f"{rate_cell(row)} | {ratio} | "
        f"{row['first_round_seconds']:.1f} s | {row['peak_memory_mib']:.0f} MiB"
    )


def to_markdown(runs: list[dict[str, Any]]) -> str:
    """The README table, with ratios against stock Flower at the same scale, then the
    models' table, with ratios against the same model trained one device at a time."""
    rows = summarize(runs)
    repeats = max((row.get("runs", 1) for row in rows), default=1)
    lines = [
        "| devices (per round) | path | updates/s | vs stock Flower | first round | peak memory |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["path"] in MODEL_PATHS:
            continue
        scale = f"{row['devices']:,} ({row.get('per_round', '?'):,})"
        label = row["path"] + (" (before)" if row.get("build") == "before" else "")
        if "error" in row:
            lines.append(f"| {scale} | {label} | failed: {row['error']} | | | |")
            continue
        base = next(
            (
                r
                for r in rows
                if r["path"] == "flower-ray" and r["devices"] == row["devices"] and "error" not in r
            ),
            None,
        )
        lines.append(f"| {scale} | {label} | {measured_cells(row, base)} |")
    if repeats > 1:
        lines += [
            "",
            f"Updates/s: the median of {repeats} runs (lowest-highest), the runs of all paths "
            "interleaved; ratios are of medians; first round: the median; peak memory: the "
            "highest.",
        ]
    lines += before_and_after(rows)
    lines += models_table(rows)
    return "\n".join(lines) + "\n"


def models_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each model's forms against the same model trained one device at a time."""
    found = [row for row in rows if row["path"] in MODEL_PATHS]
    if not found:
        return []
    lines = [
        "",
        "| model | devices (per round) | form | updates/s | vs one at a time | first round "
        "| peak memory |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in found:
        model, _, form = row["path"].partition("-")
        scale = f"{row['devices']:,} ({row.get('per_round', '?'):,})"
        if "error" in row:
            lines.append(f"| {model} | {scale} | {form} | failed: {row['error']} | | | |")
            continue
        alone = next(
            (
                r
                for r in found
                if r["path"] == f"{model}-alone"
                and r["devices"] == row["devices"]
                and "error" not in r
            ),
            None,
        )
        lines.append(f"| {model} | {scale} | {form} | {measured_cells(row, alone)} |")
    return lines


def before_and_after(rows: list[dict[str, Any]]) -> list[str]:
    """This build's updates/s over the earlier build's, per path and scale (``--before``)."""
    found = []
    for row in rows:
        if row.get("build") != "before" or "error" in row:
            continue
        this = next(
            (
                r
                for r in rows
                if r.get("build") == "this"
                and r["path"] == row["path"]
                and r["devices"] == row["devices"]
                and "error" not in r
            ),
            None,
        )
        if this and this["updates_per_second"] and row["updates_per_second"]:
            ratio = this["updates_per_second"] / row["updates_per_second"]
            found.append(f"| {row['devices']:,} | {row['path']} | {ratio:.3f} |")
    if not found:
        return []
    return ["", "| devices | path | this build / before |", "|---|---|---:|", *found]
