"""What ``stamen simulate --sweep`` does: run each combination, then compare them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stamen.cli.render import human_seconds
from stamen.cli.simulation_run import run_simulation_command
from stamen.config import StamenConfig
from stamen.server.results import METRICS_FILE, SUMMARY_FILE
from stamen.simulations.sweep import SweepRow, run_label, summarize_runs, write_sweep


def run_sweep_command(
    console: Console, runs: list[tuple[dict[str, Any], StamenConfig]], out_dir: Path
) -> KeyboardInterrupt | None:
    """Run every configuration in turn; Ctrl-C or SIGTERM stops the sweep and keeps what
    finished (the interrupt is returned)."""
    finished: list[tuple[dict[str, Any], dict[str, Any]]] = []
    curves: dict[str, list[float]] = {}
    interrupted: KeyboardInterrupt | None = None
    for number, (overrides, config) in enumerate(runs, start=1):
        label = run_label(overrides)
        console.rule(f"[bold]sweep run {number}/{len(runs)}[/] · {label}")
        run_dir = out_dir / label
        interrupted = run_simulation_command(console, config, run_dir, show_rounds=False)
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        finished.append((overrides, summary))
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        curves[label] = [json.loads(line)["accuracy"] for line in lines if line.strip()]
        if interrupted:
            break
    rows = summarize_runs(finished)
    write_sweep(out_dir, rows, curves)
    console.print(sweep_table(rows))
    console.print(f"sweep results: {out_dir}/ (sweep.csv, sweep.png, one folder per run)")
    return interrupted


def sweep_table(rows: list[SweepRow]) -> Table:
    """One line per setting, seeds averaged."""
    table = Table(title="Sweep", header_style="bold", box=box.SIMPLE_HEAD)
    for column in ("setting", "seeds", "accuracy", "± std", "up ×", "sim time", "wall"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in rows:
        table.add_row(
            row.setting,
            str(row.seeds),
            f"{100 * row.accuracy_mean:.2f}%",
            f"{100 * row.accuracy_std:.2f}",
            "-" if row.uplink_compression is None else f"{row.uplink_compression:.1f}x",
            human_seconds(row.simulated_seconds),
            f"{row.wall_seconds:.0f} s",
        )
    return table
