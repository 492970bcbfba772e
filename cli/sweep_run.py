"""What ``stamen simulate --sweep`` does: run each combination, then compare them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stamen.cli.render import human_bytes, human_seconds
from stamen.cli.simulation_run import run_simulation_command
from stamen.config import StamenConfig
from stamen.server.results import METRICS_FILE, SUMMARY_FILE
from stamen.simulations.sweep import (
    TARGET_SHARE,
    Run,
    SweepRow,
    run_label,
    summarize_runs,
    write_sweep,
)


def run_sweep_command(
    console: Console, runs: list[tuple[dict[str, Any], StamenConfig]], out_dir: Path
) -> KeyboardInterrupt | None:
    """Run every configuration in turn; Ctrl-C or SIGTERM stops the sweep and keeps what
    finished (the interrupt is returned)."""
    finished: list[Run] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    interrupted: KeyboardInterrupt | None = None
    for number, (overrides, config) in enumerate(runs, start=1):
        label = run_label(overrides)
        console.rule(f"[bold]sweep run {number}/{len(runs)}[/] · {label}")
        run_dir = out_dir / label
        interrupted = run_simulation_command(console, config, run_dir, show_rounds=False)
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        curves[label] = [json.loads(line) for line in lines if line.strip()]
        finished.append((overrides, summary, curves[label]))
        if interrupted:
            break
    rows = summarize_runs(finished)
    write_sweep(out_dir, rows, curves)
    console.print(sweep_table(rows))
    console.print(f"sweep results: {out_dir}/ (sweep.csv, sweep.png, one folder per run)")
    return interrupted


def sweep_table(rows: list[SweepRow]) -> Table:
    """One line per setting, seeds averaged; the bytes each way to the target accuracy."""
    reference = next((row for row in rows if row.reference), None)
    target = rows[0].target_accuracy if rows else None
    caption = None
    if reference is not None and target is not None:
        caption = (
            f"to target: bytes sent until {100 * target:.2f}% was first reached "
            f"({100 * TARGET_SHARE:.0f}% of {reference.setting}'s final accuracy), "
            "and how many times fewer than it needed"
        )
    table = Table(title="Sweep", header_style="bold", box=box.SIMPLE_HEAD, caption=caption)
    columns = (
        "setting",
        "seeds",
        "accuracy",
        "± std",
        "up ×",
        "down ×",
        "up to target",
        "down to target",
        "sim time",
        "wall",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in rows:
        table.add_row(
            row.setting + (" (ref)" if row.reference else ""),
            str(row.seeds),
            f"{100 * row.accuracy_mean:.2f}%",
            f"{100 * row.accuracy_std:.2f}",
            _ratio(row.uplink_compression),
            _ratio(row.downlink_compression),
            _to_target(
                row, row.uplink_to_target, reference.uplink_to_target if reference else None
            ),
            _to_target(
                row, row.downlink_to_target, reference.downlink_to_target if reference else None
            ),
            human_seconds(row.simulated_seconds),
            f"{row.wall_seconds:.0f} s",
        )
    return table


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _to_target(row: SweepRow, sent: float | None, reference: float | None) -> str:
    """``1.2 MB (35x)``: bytes to the target, and times fewer than the reference's."""
    if sent is None:
        return f"not reached ({row.reached}/{row.seeds})"
    text = human_bytes(sent)
    if reference and not row.reference:
        text += f" ({reference / sent:.1f}x)"
    if row.reached < row.seeds:
        text += f" [{row.reached}/{row.seeds} seeds]"
    return text
