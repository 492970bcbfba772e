"""``stamen server``: run a federation on real devices over the edge protocol."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

EDGE = "Edge server"
CONF = "Config"
FED = "Federation"

MONITOR = "Monitor"

EDGE_ROUNDS_FILE = "edge-rounds.jsonl"


def server(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML config file; flags override it.", rich_help_panel=CONF
        ),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Any config key: --set uplink.topk_ratio=0.1.", rich_help_panel=CONF
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="edge or fp32.", rich_help_panel=CONF, show_default=False)
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset for central evaluation (digits, mnist, mnist-small, watch, npz:PATH).",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="lenet, mobilenet or mlp.", rich_help_panel=FED, show_default=False),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Training rounds.", rich_help_panel=FED, show_default=False)
    ] = None,
    devices_per_round: Annotated[
        int | None,
        typer.Option(help="Devices sampled each round.", rich_help_panel=FED, show_default=False),
    ] = None,
    num_devices: Annotated[
        int | None,
        typer.Option(
            help="Fleet size (for the config's checks).", rich_help_panel=FED, show_default=False
        ),
    ] = None,
    address: Annotated[
        str, typer.Option(help="host:port to listen on.", rich_help_panel=EDGE)
    ] = "0.0.0.0:9443",
    certs: Annotated[
        Path, typer.Option(help="Made by: stamen certs init.", rich_help_panel=EDGE)
    ] = Path("certs"),
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Plain-text gRPC, no TLS.", rich_help_panel=EDGE),
    ] = False,
    registry: Annotated[
        Path, typer.Option(help="Device registry (stamen devices).", rich_help_panel=EDGE)
    ] = Path("devices.json"),
    state_dir: Annotated[
        Path,
        typer.Option(help="Checkpoints; a restart resumes from here.", rich_help_panel=EDGE),
    ] = Path("server-state"),
    deadline: Annotated[
        float | None,
        typer.Option(
            help="Seconds a device has to answer (federation.deadline); 0: none.",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    over_selection: Annotated[
        float | None,
        typer.Option(
            help="Sample this fraction more devices; the first devices-per-round to answer "
            "count (federation.over_selection).",
            rich_help_panel=FED,
            show_default=False,
        ),
    ] = None,
    max_payload_mb: Annotated[
        float, typer.Option(help="Largest upload accepted, in MiB.", rich_help_panel=EDGE)
    ] = 16.0,
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait for devices-per-round devices.", rich_help_panel=EDGE),
    ] = 300.0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Results directory. [default: runs/<time>-edge]",
            rich_help_panel=CONF,
            show_default=False,
        ),
    ] = None,
    monitor_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the monitor (stamen console, stamen status) on this port, with the "
            "server's TLS; 0 picks a free one.",
            rich_help_panel=MONITOR,
            show_default=False,
        ),
    ] = None,
    monitor_token_file: Annotated[
        Path | None,
        typer.Option(
            help="Operator and read-only tokens ('operator TOKEN' / 'readonly TOKEN' lines); "
            "default: a generated operator token, written to <out>/monitor-token.",
            rich_help_panel=MONITOR,
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve Prometheus metrics on this port.",
            rich_help_panel=MONITOR,
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More logs.")] = False,
) -> None:
    """Serve a federation to [bold]stamen agent[/] devices over gRPC (TLS by default).

    Settings come from the preset, the --config file, then flags, as for simulate.
    Each round is checkpointed in --state-dir; a restarted server resumes there.

    Example: [bold]stamen server --dataset mnist --rounds 20 --devices-per-round 10[/]
    """
    from stamen.cli.console_command import monitor_options
    from stamen.cli.main import FLAG_KEYS, console, err_console, fail, setup_logging
    from stamen.config import load_config, parse_assignment
    from stamen.core.errors import StamenError
    from stamen.server.edge import EdgeServer, EdgeServerSettings
    from stamen.server.edge.certs import CertPaths

    flags = {
        "preset": preset,
        "dataset": dataset,
        "model": model,
        "rounds": rounds,
        "devices_per_round": devices_per_round,
        "num_devices": num_devices,
        "deadline": deadline,
        "over_selection": over_selection,
    }
    try:
        overrides: dict[str, Any] = {}
        for text in assignments or []:
            key, value = parse_assignment(text)
            overrides[key] = value
        overrides.update({FLAG_KEYS[k]: v for k, v in flags.items() if v is not None})
        if devices_per_round is not None and num_devices is None:
            overrides.setdefault("federation.num_devices", max(devices_per_round, 1))
        config = load_config(config_file, overrides)
        settings = EdgeServerSettings(
            address=address,
            certs_dir=certs,
            insecure=insecure,
            registry=registry,
            max_payload_bytes=int(max_payload_mb * 2**20),
        )
        paths = CertPaths(certs)
        monitor = monitor_options(
            monitor_port,
            metrics_port,
            "0.0.0.0",
            monitor_token_file,
            None if insecure else paths.server_cert,
            None if insecure else paths.server_key,
        )
    except StamenError as error:
        fail(str(error))
        return
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    setup_logging(verbose)
    logging.getLogger("stamen.server.edge").setLevel(logging.INFO if verbose else logging.WARNING)
    if insecure:
        err_console.print(
            "[bold yellow]warning:[/] --insecure: no TLS; device traffic can be read and altered"
        )
    out_dir = out or Path("runs") / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-edge"
    edge_log = EdgeRoundLog(console, out_dir)
    try:
        edge = EdgeServer(settings, on_round=edge_log.on_edge_round)
        port = edge.start()
    except StamenError as error:
        fail(str(error))
        return
    seconds = config.federation.deadline
    console.print(
        f"[bold]Stamen edge server[/] on port {port} · "
        f"{'[yellow]insecure[/]' if insecure else 'TLS'} · {config.data.dataset} · "
        f"{config.training.model.value} · {config.federation.rounds} rounds · "
        f"{config.federation.devices_per_round}/round · "
        f"{f'deadline {seconds:g} s' if seconds else 'no deadline'}",
        highlight=False,
    )
    try:
        wait_for_devices(console, edge, config.federation.devices_per_round, wait)
        run_edge_federation(console, edge, config, out_dir, state_dir, edge_log, monitor)
    except StamenError as error:
        fail(str(error))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted; the last finished round is checkpointed[/]")
        raise typer.Exit(code=130) from None
    finally:
        edge.stop()


def wait_for_devices(console: Console, edge: Any, wanted: int, timeout: float) -> None:
    """Block until ``wanted`` devices are connected, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    shown = -1
    while time.monotonic() < deadline:
        count = len(list(edge.grid.get_node_ids()))
        if count != shown:
            console.print(f"devices connected: {count}/{wanted}", highlight=False)
            shown = count
        if count >= wanted:
            return
        time.sleep(0.2)
    console.print(f"[yellow]only {shown} of {wanted} devices after {timeout:.0f} s; starting[/]")


def run_edge_federation(
    console: Console,
    edge: Any,
    config: Any,
    out_dir: Path,
    state_dir: Path,
    edge_log: EdgeRoundLog,
    monitor: Any = None,
) -> None:
    """Run the unchanged Stamen ServerApp on the edge grid, with checkpoints (and a monitor)."""
    from flwr.app import Context, RecordDict

    from stamen.cli.monitor_setup import start_monitored_run
    from stamen.cli.render import ProgressReporter, results_table, summary_lines
    from stamen.server import CollectingReporter, Reporters, ResultsWriter, server_app
    from stamen.server.checkpoint import CheckpointStore

    monitored = start_monitored_run(monitor, config, out_dir, console) if monitor else None
    collector = CollectingReporter()
    progress = ProgressReporter(console)
    reporters = Reporters(
        edge_log,
        progress,
        collector,
        ResultsWriter(out_dir),
        monitored.state if monitored else None,
    )
    app = server_app(
        config,
        reporters,
        monitored.control if monitored else None,
        checkpoints=CheckpointStore(state_dir),
    )
    context = Context(
        run_id=edge.grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    try:
        app(edge.grid, context)
    finally:
        progress.stop()
        if monitored is not None:
            monitored.stop()
    console.print(results_table(collector.records))
    if collector.summary is not None:
        for line in summary_lines(collector.summary):
            console.print(line)
    console.print(f"results: {out_dir}/ (metrics.jsonl, {EDGE_ROUNDS_FILE}, summary.json)")


class EdgeRoundLog:
    """Writes each round's edge counts (deadline misses, late and refused uploads)."""

    def __init__(self, console: Console, out_dir: Path) -> None:
        self.console = console
        self.out_dir = out_dir
        self.path = out_dir / EDGE_ROUNDS_FILE
        self.rounds: list[Any] = []

    def on_edge_round(self, stats: Any) -> None:
        """One line per round to edge-rounds.jsonl, and a console note on misses."""
        self.rounds.append(stats)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(stats.to_dict()) + "\n")
        if stats.timed_out or stats.refused_uploads:
            self.console.print(
                f"[yellow]round {stats.group_id}: {stats.timed_out} missed the deadline, "
                f"{stats.refused_uploads} uploads refused[/]",
                highlight=False,
            )

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Nothing to do."""

    def on_round(self, record: Any) -> None:
        """Nothing to do: edge counts arrive through :meth:`on_edge_round`."""

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Add the edge totals to the summary (late replies arrive after their round)."""
        summary["backend"] = "edge"
        summary["edge"] = {
            "timed_out": sum(s.timed_out for s in self.rounds),
            "late_dropped": sum(s.late_dropped for s in self.rounds),
            "surplus_dropped": sum(s.surplus_dropped for s in self.rounds),
            "refused_uploads": sum(s.refused_uploads for s in self.rounds),
            "over_selected": sum(s.over_selected for s in self.rounds),
            "round_seconds": [round(s.seconds, 4) for s in self.rounds],
            "rounds": [s.to_dict() for s in self.rounds],
        }
