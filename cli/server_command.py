"""``stamen server``: run a federation on real devices over the edge protocol."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from stamen.cli import option_table as opt
from stamen.cli.edge_rounds import EDGE_ROUNDS_FILE, EdgeRoundLog
from stamen.cli.monitor_setup import monitor_options
from stamen.cli.options import OptionValues, takes
from stamen.cli.output import console, err_console, one_line_errors, setup_logging
from stamen.cli.render import print_config
from stamen.config import StamenConfig, load_config
from stamen.core.errors import ConfigError
from stamen.server.checkpoint import PREVIOUS_DIR, CheckpointStore, setup_differences

OPTIONS = (
    opt.CONFIG_FILE,
    opt.ASSIGNMENTS,
    opt.OUT,
    opt.PRESET,
    opt.DATASET,
    opt.MODEL,
    opt.ROUNDS,
    opt.DEVICES_PER_ROUND,
    opt.NUM_DEVICES,
    opt.SEED,
    opt.STRATEGY,
    opt.DEADLINE,
    opt.OVER_SELECTION,
    *opt.TRAINING_AND_COMPRESSION,
    *opt.PRIVACY,
    opt.ADDRESS,
    opt.CERTS,
    opt.INSECURE,
    opt.REGISTRY,
    opt.STATE_DIR,
    opt.RESUME,
    opt.FRESH,
    opt.MAX_PAYLOAD_MB,
    opt.WAIT,
    opt.SESSION_TTL,
    opt.MONITOR_PORT,
    opt.MONITOR_HOST,
    opt.MONITOR_TOKEN_FILE,
    opt.METRICS_PORT,
    opt.DRY_RUN,
    opt.VERBOSE,
)
"""The options of ``stamen server``, in ``--help`` order (shared ones as on simulate)."""

EDGE_DEADLINE = 120.0
"""Real devices vanish: without a deadline one silent device would hold its round until
``federation.round_timeout``. A config file or ``--deadline 0`` still turns it off."""


@takes(OPTIONS)
def server(values: OptionValues) -> None:
    """Serve a federation to [bold]stamen agent[/] devices over gRPC (TLS by default).

    Settings come from the preset, the --config file, then flags, as for simulate.
    Each round is checkpointed in --state-dir. At start the server says what that
    folder holds: an unfinished run resumes, a finished one needs --resume (go on,
    with more --rounds) or --fresh (start over; the old run moves to previous/).
    The monitor (--monitor-port) uses the server's TLS and binds 127.0.0.1
    unless --monitor-host names another address.

    Example: [bold]stamen server --dataset mnist --rounds 20 --devices-per-round 10[/]
    """
    from stamen.server.edge import EdgeServer, EdgeServerSettings, RunEnd
    from stamen.server.edge.certs import CertPaths

    certs, insecure = values[opt.CERTS], values[opt.INSECURE]
    with one_line_errors():
        overrides = opt.config_overrides(values)
        devices_per_round = values[opt.DEVICES_PER_ROUND]
        if devices_per_round is not None and values[opt.NUM_DEVICES] is None:
            # The fleet is whoever connects: size it for the config's checks only.
            overrides.setdefault("federation.num_devices", max(devices_per_round, 1))
        config = load_config(
            values[opt.CONFIG_FILE], overrides, defaults={"federation.deadline": EDGE_DEADLINE}
        )
        paths = CertPaths(certs)
        monitor = monitor_options(
            values[opt.MONITOR_PORT],
            values[opt.METRICS_PORT],
            values[opt.MONITOR_HOST],
            values[opt.MONITOR_TOKEN_FILE],
            None if insecure else paths.server_cert,
            None if insecure else paths.server_key,
        )
        if values[opt.DRY_RUN]:
            print_config(console, config)
            return
        settings = EdgeServerSettings(
            address=values[opt.ADDRESS],
            certs_dir=certs,
            insecure=insecure,
            registry=values[opt.REGISTRY],
            max_payload_bytes=int(values[opt.MAX_PAYLOAD_MB] * 2**20),
            session_ttl_seconds=values[opt.SESSION_TTL],
        )
        checkpoints = CheckpointStore(values[opt.STATE_DIR])
        start_note = plan_start(checkpoints, config, values[opt.RESUME], values[opt.FRESH])
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    verbose = values[opt.VERBOSE]
    setup_logging(verbose)
    logging.getLogger("stamen.server.edge").setLevel(logging.INFO if verbose else logging.WARNING)
    if insecure:
        for line in insecure_warning(settings.session_ttl_seconds, monitor):
            err_console.print(line, highlight=False)
    out_dir = values[opt.OUT] or Path("runs") / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-edge"
    edge_log = EdgeRoundLog(console, out_dir)
    with one_line_errors():
        edge = EdgeServer(settings, on_round=edge_log.on_edge_round)
        port = edge.start()
    seconds = config.federation.deadline
    console.print(
        f"[bold]Stamen edge server[/] on port {port} · "
        f"{'[yellow]insecure[/]' if insecure else 'TLS'} · {config.data.dataset} · "
        f"{config.training.model.value} · {config.federation.rounds} rounds · "
        f"{config.federation.devices_per_round}/round · "
        f"{f'deadline {seconds:g} s' if seconds else 'no deadline'}",
        highlight=False,
    )
    console.print(start_note, highlight=False)
    ended = RunEnd.failed()  # the agents are told how the run ended
    try:
        with one_line_errors():
            wait_for_devices(console, edge, config.federation.devices_per_round, values[opt.WAIT])
            summary = run_edge_federation(
                console, edge, config, out_dir, checkpoints, edge_log, monitor
            )
            ended = RunEnd.of_summary(summary)
    except KeyboardInterrupt:
        ended = RunEnd.interrupted()
        err_console.print("[yellow]interrupted; the last finished round is checkpointed[/]")
        raise typer.Exit(code=130) from None
    finally:
        edge.stop(ended=ended)


def insecure_warning(session_ttl: float, monitor: Any = None) -> list[str]:
    """What ``--insecure`` leaves open and what stays protected, line by line."""
    lines = [
        "[bold yellow]warning:[/] --insecure: no TLS. Traffic is plain text: anyone on the "
        "path can read the models, the updates and the session tokens, and can drop or "
        "delay any of them.",
        "  Not protected: the privacy of models and updates; a session token read on the "
        "path lets its reader open that device's task stream (and so read its tasks) and "
        f"send its heartbeats until the session expires (at most {session_ttl:g} s) or the "
        "device joins again.",
        "  Still protected: joining needs the device's private key; every upload must be "
        "signed by its device's key, so a stolen token cannot upload or forge an update; "
        "every model is signed by this server, so a device refuses an altered one.",
    ]
    if monitor is not None:
        where = f"{monitor.host}:{monitor.port}"
        exposed = monitor.host not in ("127.0.0.1", "localhost", "::1")
        lines.append(
            f"  The monitor on {where} is plain text too: its tokens (which can pause and "
            "stop the run) travel in the clear"
            + ("; it is reachable beyond this machine." if exposed else "; it is on loopback.")
        )
    lines.append("  Use --insecure on loopback or for tests only.")
    return lines


def plan_start(store: CheckpointStore, config: StamenConfig, resume: bool, fresh: bool) -> str:
    """What ``--state-dir`` holds and what this start does with it, decided before any
    device connects; a :class:`ConfigError` when the operator has to choose.

    An unfinished run (a server killed or restarted mid-run) resumes unless ``fresh``:
    that loses nothing, and a supervisor's restart needs no flag. A finished (or
    operator-stopped) run is not silently resumed: ``resume`` goes on with it, which
    trains only with more ``--rounds``, and ``fresh`` moves it to ``previous/``.
    """
    where = store.directory
    if resume and fresh:
        raise ConfigError("--resume and --fresh contradict each other; give one of them")
    stored = store.inspect()
    if stored is None:
        note = " (--resume: nothing to resume)" if resume else ""
        return f"state: {where}/ holds no run; starting a new one{note}"
    held = f"{where}/ holds {stored.describe()}"
    if fresh:
        return f"state: {held}; --fresh: moved it to {store.archive()}/, starting a new run"
    if differences := setup_differences(stored.config, config.to_dict()):
        raise ConfigError(
            f"{held}, made with another data, model or compression config "
            f"({'; '.join(differences[:3])}); use that config (--set) to go on with it, or "
            f"--fresh to start a new run (the old one moves to {where}/{PREVIOUS_DIR}/)"
        )
    rounds = config.federation.rounds
    if stored.finished and not resume:
        raise ConfigError(
            f"{held}; pass --resume to go on with it (with --rounds above {stored.round}) or "
            f"--fresh to start a new run (the old one moves to {where}/{PREVIOUS_DIR}/)"
        )
    if rounds <= stored.round:
        raise ConfigError(
            f"{held}, and --rounds {rounds} leaves nothing to train; raise --rounds above "
            f"{stored.round} to go on with it, or pass --fresh to start a new run"
        )
    how = "--resume: going on" if resume else "resuming it (--fresh starts over instead)"
    return f"state: {held}; {how} with rounds {stored.round + 1}-{rounds}"


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
    checkpoints: CheckpointStore,
    edge_log: EdgeRoundLog,
    monitor: Any = None,
) -> dict[str, Any] | None:
    """Run the unchanged Stamen ServerApp on the edge grid, with checkpoints (and a monitor);
    returns the run's summary."""
    from flwr.app import Context, RecordDict

    from stamen.cli.monitor_setup import start_monitored_run
    from stamen.cli.render import ProgressReporter, results_table, summary_lines
    from stamen.server import (
        CollectingReporter,
        HeapFreezer,
        Reporters,
        ResultsWriter,
        server_app,
    )

    monitored = start_monitored_run(monitor, config, out_dir, console) if monitor else None
    collector = CollectingReporter()
    progress = ProgressReporter(console)
    reporters = Reporters(
        HeapFreezer(),
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
        checkpoints=checkpoints,
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
    summary = collector.summary or {}
    checkpoints.mark_ended("stopped" if summary.get("stopped") else "finished", out_dir)
    console.print(results_table(collector.records))
    console.print(edge_log.table())
    for line in summary_lines(summary) if summary else []:
        console.print(line)
    console.print(f"results: {out_dir}/ (metrics.jsonl, {EDGE_ROUNDS_FILE}, summary.json)")
    return summary or None
