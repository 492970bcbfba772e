"""What ``stamen simulate`` does once its config is resolved."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from stamen.cli.monitor_setup import MonitorOptions, start_monitored_run
from stamen.cli.render import ProgressReporter, results_table, summary_lines
from stamen.config import Backend, StamenConfig
from stamen.core import signal_name
from stamen.launch import simulate
from stamen.server import CollectingReporter, Reporters, ResultsWriter
from stamen.server.federation import summarize


def run_simulation_command(
    console: Console,
    config: StamenConfig,
    out_dir: Path,
    monitor: MonitorOptions | None = None,
    *,
    show_rounds: bool = True,
) -> KeyboardInterrupt | None:
    """Run with a progress bar, then print the per-round table and the headline.

    Ctrl-C or SIGTERM stops the run after writing everything the finished rounds
    produced; the return value is that interrupt, if one came. With ``monitor``,
    the monitor service (and metrics endpoint) serve the run while it lasts.
    """
    interrupted: KeyboardInterrupt | None = None
    fed = config.federation
    local = fed.backend is not Backend.FLOWER_RAY  # Stamen's grid: tiers and a clock
    console.print(
        f"[bold]Stamen[/] · preset [bold]{config.preset.value}[/] · {config.data.dataset} · "
        f"{config.training.model.value} · {fed.num_devices} devices, {fed.devices_per_round}"
        f"/round · {fed.rounds} rounds · {config.data.partition.value} · "
        f"{fed.backend.value} backend"
        + (f" · {config.fleet.preset.value} fleet" if local else "")
        + f" · strategy {config.strategy.name.value}"
    )
    monitored = start_monitored_run(monitor, config, out_dir, console) if monitor else None
    progress = ProgressReporter(console, fed.devices_sampled if local else None)
    collector = CollectingReporter()
    writer = ResultsWriter(out_dir)
    started = time.perf_counter()
    try:
        summary = simulate(
            config,
            Reporters(progress, collector, writer, monitored.state if monitored else None),
            on_reply=progress.on_device_reply,
            control=monitored.control if monitored else None,
        )
    except KeyboardInterrupt as stop:
        interrupted = stop
        progress.stop()
        console.print(
            f"[yellow]interrupted ({signal_name(stop)}) after {len(collector.records)} rounds; "
            "writing the results so far[/]"
        )
        summary = summarize(config, collector.records, wall_seconds=time.perf_counter() - started)
        summary.update(
            interrupted=True, signal=signal_name(stop), backend=config.federation.backend.value
        )
        writer.on_finish(summary)
    finally:
        progress.stop()
        if monitored is not None:
            monitored.stop()
    if show_rounds:
        console.print(results_table(collector.records))
    if summary.get("stopped"):
        console.print(f"[yellow]stopped by an operator after {summary['rounds']} rounds[/]")
    for line in summary_lines(summary):
        console.print(line)
    console.print(f"results: {out_dir}/ (metrics.jsonl, summary.json, rounds.png)")
    return interrupted
