"""The ``stamen`` command line."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from stamen.cli import export_command, precision_command
from stamen.cli.agent_command import agent_app
from stamen.cli.certs_command import certs_app
from stamen.cli.console_command import console_command, monitor_options
from stamen.cli.devices_command import devices_app
from stamen.cli.server_command import server
from stamen.cli.status_command import status_command
from stamen.config import Backend, FleetPreset, Preset, load_config, parse_assignment
from stamen.core import __version__
from stamen.core.errors import StamenError
from stamen.simulations.sweep import expand, parse_axis

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="stamen",
    help="Federated edge learning on Flower and PyTorch: quantization-aware, pruned models "
    "trained on devices, compressed updates, and simulated fleets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_callback(value: bool) -> None:
    """Print the version and exit."""
    if value:
        console.print(f"stamen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Stamen: federated edge learning."""


FLAG_KEYS: dict[str, str] = {
    "preset": "preset",
    "dataset": "data.dataset",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "model": "training.model",
    "num_devices": "federation.num_devices",
    "devices_per_round": "federation.devices_per_round",
    "rounds": "federation.rounds",
    "seed": "federation.seed",
    "backend": "federation.backend",
    "local_epochs": "training.local_epochs",
    "lr": "training.lr",
    "batch_size": "training.batch_size",
    "qat": "qat.enabled",
    "qat_bits": "qat.weight_bits",
    "sparsity": "pruning.target_sparsity",
    "topk": "uplink.topk_ratio",
    "uplink_values": "uplink.values",
    "error_feedback": "uplink.error_feedback",
    "downlink_values": "downlink.values",
    "strategy": "strategy.name",
    "fleet": "fleet.preset",
    "deadline": "federation.deadline",
    "over_selection": "federation.over_selection",
    "workers": "federation.workers",
    "device_batch": "federation.device_batch",
    "ray_address": "federation.ray_address",
    "samples_per_device": "data.samples_per_device",
}
"""Which config key each ``simulate`` flag sets."""

DATA = "Data and model"
FED = "Federation"
COMP = "Compression"
OUT = "Run"
CONF = "Config"
MON = "Monitor"


@app.command()
def simulate(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML config file; flags override it.",
            rich_help_panel=CONF,
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        Preset | None,
        typer.Option(
            help="[bold]edge[/]: QAT int8, pruning to 50%, top-k+4-bit+error-feedback uplink, "
            "int8 downlink. [bold]fp32[/]: plain FedAvg baseline.  \\[default: edge]",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="digits, mnist, mnist-small, watch, or npz:PATH.  \\[default: mnist]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="lenet, mobilenet or mlp.  \\[default: lenet]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            help="iid, dirichlet, shards or natural.  \\[default: dirichlet]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Dirichlet alpha; smaller is more non-IID.  \\[default: 0.3]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    num_devices: Annotated[
        int | None,
        typer.Option(
            help="Virtual devices in the fleet.  \\[default: 100]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    devices_per_round: Annotated[
        int | None,
        typer.Option(
            help="Devices sampled each round.  \\[default: 10]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            help="Training rounds.  \\[default: 20]", rich_help_panel=FED, show_default=False
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seeds data split, init, sampling and rounding.  \\[default: 0]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        Backend | None,
        typer.Option(
            help="local: Stamen's simulation grid (worker processes, simulated clock). "
            "ray: Flower's Simulation Engine.  \\[default: local]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    fleet: Annotated[
        FleetPreset | None,
        typer.Option(
            help="Device mix: phones, mixed (phones, IoT boards, microcontrollers), iot, "
            "ideal, or custom from \\[fleet.tiers.NAME] tables.  \\[default: mixed]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            help="Seconds (simulated) a device has to answer; later replies are "
            "stragglers.  \\[default: none]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    over_selection: Annotated[
        float | None,
        typer.Option(
            help="Sample this fraction more devices; the first devices-per-round to "
            "answer make the round.  \\[default: 0]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes of the local backend.  \\[default: one per core]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    device_batch: Annotated[
        int | None,
        typer.Option(
            help="Devices a local-backend worker trains together (LeNets; "
            "1: one by one).  \\[default: 16]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --backend ray: join this Ray cluster (e.g. 127.0.0.1:6379).",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    samples_per_device: Annotated[
        int | None,
        typer.Option(
            help="Give every device this many rows, drawn with the partition's skew "
            "(0 splits the training set).  \\[default: 0]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    local_epochs: Annotated[
        int | None,
        typer.Option(
            help="Local epochs per round.  \\[default: 1]", rich_help_panel=DATA, show_default=False
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Local SGD learning rate.  \\[default: 0.05]",
            rich_help_panel=DATA,
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Local batch size.  \\[default: 20]", rich_help_panel=DATA, show_default=False
        ),
    ] = None,
    qat: Annotated[
        bool | None,
        typer.Option(
            "--qat/--no-qat",
            help="Quantization-aware training on devices.",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    qat_bits: Annotated[
        int | None,
        typer.Option(help="QAT weight bits: 8, 4 or 2.", rich_help_panel=COMP, show_default=False),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            help="Target pruning sparsity, reached halfway through the run.",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    topk: Annotated[
        float | None,
        typer.Option(
            help="Uplink top-k ratio in (0, 1]; 1 sends every value.",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    uplink_values: Annotated[
        str | None,
        typer.Option(
            help="Uplink value format: fp32, fp16, q8, q4, q2.",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    error_feedback: Annotated[
        bool | None,
        typer.Option(
            "--error-feedback/--no-error-feedback",
            help="Keep the uplink residual on devices.",
            rich_help_panel=COMP,
            show_default=False,
        ),
    ] = None,
    downlink_values: Annotated[
        str | None,
        typer.Option(
            help="Downlink value format: fp32, fp16, q8.", rich_help_panel=COMP, show_default=False
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Aggregation strategy: fedavg, fedprox, fedadam, fedyogi, median, trimmed-mean, "
            "norm-bounded, krum, multi-krum, fedbuff (stamen strategies describes them).  "
            "\\[default: fedavg]",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any config key: --set uplink.lossless=zlib (repeatable).",
            rich_help_panel=CONF,
            show_default=False,
        ),
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="Run a grid: --sweep preset=edge,fp32 --sweep seed=0,1,2 (repeatable); "
            "writes sweep.csv and sweep.png.",
            rich_help_panel=CONF,
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Results directory.  \\[default: runs/<time>-<preset>]",
            rich_help_panel=CONF,
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the resolved config and exit.", rich_help_panel=OUT),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show Flower's and Stamen's logs.", rich_help_panel=OUT
        ),
    ] = False,
    monitor_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the monitor on this port (0: any free port) for stamen console.",
            rich_help_panel=MON,
            show_default=False,
        ),
    ] = None,
    monitor_host: Annotated[
        str, typer.Option(help="Address the monitor binds.", rich_help_panel=MON)
    ] = "127.0.0.1",
    monitor_token_file: Annotated[
        Path | None,
        typer.Option(
            help="Monitor tokens, '<operator|read-only> <token>' a line. Without it (or "
            "STAMEN_MONITOR_*_TOKEN) an operator token is generated into --out.",
            rich_help_panel=MON,
            show_default=False,
        ),
    ] = None,
    monitor_tls_cert: Annotated[
        Path | None,
        typer.Option(help="PEM certificate for the monitor's TLS.", rich_help_panel=MON),
    ] = None,
    monitor_tls_key: Annotated[
        Path | None, typer.Option(help="PEM key for the monitor's TLS.", rich_help_panel=MON)
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (needs --monitor-port).",
            rich_help_panel=MON,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a federated simulation and report accuracy and bytes per round.

    Settings come from the preset, then the --config file, then flags. Results go
    to --out: metrics.jsonl (a line per round), summary.json and rounds.png.

    Example: [bold]stamen simulate --dataset digits --rounds 5 --preset fp32[/]
    """
    flags = {
        "preset": preset,
        "dataset": dataset,
        "model": model,
        "partition": partition,
        "alpha": alpha,
        "num_devices": num_devices,
        "devices_per_round": devices_per_round,
        "rounds": rounds,
        "seed": seed,
        "backend": backend,
        "local_epochs": local_epochs,
        "lr": lr,
        "batch_size": batch_size,
        "qat": qat,
        "qat_bits": qat_bits,
        "sparsity": sparsity,
        "topk": topk,
        "uplink_values": uplink_values,
        "error_feedback": error_feedback,
        "downlink_values": downlink_values,
        "strategy": strategy,
        "fleet": fleet,
        "deadline": deadline,
        "over_selection": over_selection,
        "workers": workers,
        "device_batch": device_batch,
        "ray_address": ray_address,
        "samples_per_device": samples_per_device,
    }
    try:
        overrides: dict[str, Any] = {}
        for text in assignments or []:
            key, value = parse_assignment(text)
            overrides[key] = value
        for name, value in flags.items():
            if value is not None:
                overrides[FLAG_KEYS[name]] = getattr(value, "value", value)
        if qat_bits is not None and qat is None:
            overrides["qat.enabled"] = True
        config = load_config(config_file, overrides)
        runs = [
            (combo, load_config(config_file, {**overrides, **combo}))
            for combo in expand([parse_axis(text) for text in sweep or []])
        ]
    except StamenError as error:
        fail(str(error))
    from stamen.cli.simulate_command import run_simulation_command

    if dry_run:
        from stamen.cli.simulate_command import print_config

        print_config(console, config)
        return
    label = "sweep" if sweep else config.preset.value
    out_dir = out or Path("runs") / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{label}"
    setup_logging(verbose)
    try:
        monitor = monitor_options(
            monitor_port,
            metrics_port,
            monitor_host,
            monitor_token_file,
            monitor_tls_cert,
            monitor_tls_key,
        )
        if sweep:
            from stamen.cli.sweep_command import run_sweep_command

            interrupted = run_sweep_command(console, runs, out_dir)
        else:
            interrupted = run_simulation_command(console, config, out_dir, monitor)
    except StamenError as error:
        fail(str(error))
    if interrupted:
        raise typer.Exit(code=130)


@app.command()
def strategies() -> None:
    """List the aggregation strategies, one line each, with their papers."""
    from stamen.cli.strategies_command import print_strategies

    print_strategies(console)


app.command(name="console")(console_command)
app.command(name="status")(status_command)


def setup_logging(verbose: bool) -> None:
    """Route logs through rich; Flower's chatter only with --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    # Flower's warnings without --verbose are mostly deprecation notices about the
    # APIs Stamen wraps; Stamen's own warnings (rejected updates) stay visible.
    logging.getLogger("flwr").setLevel(level if verbose else logging.ERROR)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


app.command("server")(server)
app.add_typer(agent_app, name="agent")
app.add_typer(certs_app, name="certs")
app.add_typer(devices_app, name="devices")
export_command.register(app, console, fail)
precision_command.register(app, console, fail)


def main() -> None:
    """Entry point of the ``stamen`` script."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()
