"""``stamen simulate``: resolve the config from the preset, the file and the flags, then run it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from stamen.cli import option_table as opt
from stamen.cli.monitor_setup import monitor_options
from stamen.cli.options import OptionValues, takes
from stamen.cli.output import console, one_line_errors, setup_logging
from stamen.cli.render import print_config
from stamen.config import load_config
from stamen.core import exit_status, terminate_as_interrupt
from stamen.simulations.sweep import expand, parse_axis

OPTIONS = (
    opt.CONFIG_FILE,
    opt.PRESET,
    opt.DATASET,
    opt.MODEL,
    opt.PARTITION,
    opt.ALPHA,
    opt.NUM_DEVICES,
    opt.DEVICES_PER_ROUND,
    opt.ROUNDS,
    opt.SEED,
    opt.BACKEND,
    opt.FLEET,
    opt.DEADLINE,
    opt.OVER_SELECTION,
    opt.WORKERS,
    opt.DEVICE_BATCH,
    opt.TORCH_DEVICE,
    opt.RAY_ADDRESS,
    opt.SAMPLES_PER_DEVICE,
    *opt.TRAINING_AND_COMPRESSION,
    *opt.PRIVACY,
    opt.STRATEGY,
    opt.ASSIGNMENTS,
    opt.SWEEP,
    opt.OUT,
    opt.DRY_RUN,
    opt.VERBOSE,
    opt.MONITOR_PORT,
    opt.MONITOR_HOST,
    opt.MONITOR_TOKEN_FILE,
    opt.MONITOR_TLS_CERT,
    opt.MONITOR_TLS_KEY,
    opt.METRICS_PORT,
)
"""The options of ``stamen simulate``, in ``--help`` order."""


@takes(OPTIONS)
def simulate(values: OptionValues) -> None:
    """Run a federated simulation and report accuracy and bytes per round.

    Settings come from the preset, then the --config file, then flags. Results go
    to --out: metrics.jsonl (a line per round), summary.json and rounds.png.

    Example: [bold]stamen simulate --dataset digits --rounds 5 --preset fp32[/]
    """
    config_file, sweep = values[opt.CONFIG_FILE], values[opt.SWEEP]
    with one_line_errors():
        overrides = opt.config_overrides(values)
        config = load_config(config_file, overrides)
        runs = [
            (combo, load_config(config_file, {**overrides, **combo}))
            for combo in expand([parse_axis(text) for text in sweep or []])
        ]
    if values[opt.DRY_RUN]:
        print_config(console, config)
        return
    label = "sweep" if sweep else config.preset.value
    out_dir = values[opt.OUT] or Path("runs") / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{label}"
    setup_logging(values[opt.VERBOSE])
    with one_line_errors(), terminate_as_interrupt():
        monitor = monitor_options(
            values[opt.MONITOR_PORT],
            values[opt.METRICS_PORT],
            values[opt.MONITOR_HOST],
            values[opt.MONITOR_TOKEN_FILE],
            values[opt.MONITOR_TLS_CERT],
            values[opt.MONITOR_TLS_KEY],
        )
        if sweep:
            from stamen.cli.sweep_run import run_sweep_command

            interrupted = run_sweep_command(console, runs, out_dir)
        else:
            from stamen.cli.simulation_run import run_simulation_command

            interrupted = run_simulation_command(console, config, out_dir, monitor)
    if interrupted is not None:
        raise typer.Exit(code=exit_status(interrupted))
