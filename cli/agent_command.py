"""``stamen agent``: run a device agent against an edge server; ``stamen agent keygen``."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from stamen.cli.output import console, err_console, fail, setup_logging

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

agent_app = typer.Typer(
    help="Run the device agent: join an edge server and train on local data.",
    invoke_without_command=True,
)

CONN = "Connection"
DATA = "Local data"
GUARD = "Resource guards"
DEFAULT_STATE = Path.home() / ".stamen" / "agent"


@agent_app.callback()
def agent(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(help="The edge server, HOST:PORT.", rich_help_panel=CONN, show_default=False),
    ] = None,
    certs: Annotated[
        Path,
        typer.Option(help="Folder with ca.pem and model-signing.pub.", rich_help_panel=CONN),
    ] = Path("certs"),
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Plain-text gRPC (no TLS). Loopback tests only.",
            rich_help_panel=CONN,
        ),
    ] = False,
    state_dir: Annotated[
        Path, typer.Option(help="Device key and persisted state.", rich_help_panel=CONN)
    ] = DEFAULT_STATE,
    dataset: Annotated[
        str,
        typer.Option(
            help="Built-in dataset (digits, mnist, mnist-small, watch) or npz:PATH.",
            rich_help_panel=DATA,
        ),
    ] = "mnist",
    partition_id: Annotated[
        int, typer.Option(help="This device's partition.", rich_help_panel=DATA)
    ] = 0,
    num_partitions: Annotated[
        int, typer.Option(help="Partitions the dataset is split into.", rich_help_panel=DATA)
    ] = 1,
    partition: Annotated[
        str, typer.Option(help="iid, dirichlet, shards or natural.", rich_help_panel=DATA)
    ] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet alpha.", rich_help_panel=DATA)] = 0.3,
    seed: Annotated[
        int, typer.Option(help="Seed of the split (use the server's).", rich_help_panel=DATA)
    ] = 0,
    min_battery: Annotated[
        float | None,
        typer.Option(
            help="Skip rounds below this battery % unless charging.",
            rich_help_panel=GUARD,
            show_default=False,
        ),
    ] = None,
    require_charging: Annotated[
        bool,
        typer.Option(
            "--require-charging", help="Train only on external power.", rich_help_panel=GUARD
        ),
    ] = False,
    max_memory_percent: Annotated[
        float | None,
        typer.Option(
            help="Skip rounds while system memory use is above this %.",
            rich_help_panel=GUARD,
            show_default=False,
        ),
    ] = None,
    max_cpu_load: Annotated[
        float | None,
        typer.Option(
            help="Skip rounds while the 1-min load per core is above this.",
            rich_help_panel=GUARD,
            show_default=False,
        ),
    ] = None,
    give_up_after: Annotated[
        float | None,
        typer.Option(
            help="Exit (status 4) after this many seconds without a server. "
            "[default: retry forever]",
            rich_help_panel=CONN,
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
) -> None:
    """Join SERVER, verify and run each task with the Stamen ClientApp, upload the update.

    Exit status: 0 the run ended (or the agent was stopped), 2 bad options or files,
    3 refused for good (unregistered, revoked, protocol, model key, data that does not
    fit the model), 4 --give-up-after passed, 5 TLS failure (wrong CA, name, TLS on one
    side only).

    Example: [bold]stamen agent --server edge.example:9443 --certs certs --dataset mnist
    --partition-id 3 --num-partitions 10[/]
    """
    if ctx.invoked_subcommand is not None:
        return
    from stamen.client.agent import Agent, AgentExit, AgentSettings, AgentStopped, GuardSettings
    from stamen.client.agent.state import AgentStateStore
    from stamen.contract.edge import load_public_key
    from stamen.core.errors import StamenError

    if server is None:
        fail("--server HOST:PORT is required (or use: stamen agent keygen)")
        return
    setup_logging(verbose)
    logging.getLogger("stamen.agent").setLevel(logging.DEBUG if verbose else logging.INFO)
    if insecure:
        err_console.print(
            "[bold yellow]warning:[/] --insecure: no TLS. Traffic is plain text: anyone on "
            "the path can read the models, this device's updates and its session token, and "
            "can drop or delay them; the server's identity is not checked. Still protected: "
            "this agent trains only on models signed by the server's model-signing key, and "
            "signs every upload with this device's key, so a stolen session token cannot "
            "upload for it. Use it on loopback or for tests only.",
            highlight=False,
        )
    try:
        settings = AgentSettings(
            server=server,
            state_dir=state_dir,
            ca_cert=None if insecure else certs / "ca.pem",
            model_key=load_public_key(certs / "model-signing.pub"),
            node_config={"partition-id": partition_id, "num-partitions": num_partitions},
            guards=GuardSettings(
                min_battery=min_battery,
                require_charging=require_charging,
                max_memory_percent=max_memory_percent,
                max_cpu_load=max_cpu_load,
            ),
            give_up_after=give_up_after,
        )
        if not insecure and not (certs / "ca.pem").exists():
            fail(f"{certs / 'ca.pem'} is missing: copy it from the server's certs folder")
        key = AgentStateStore(state_dir).load_key()
        app = _client_app(dataset, partition, alpha, seed, partition_id, num_partitions)
        runner = Agent(settings, app, key)
    except StamenError as error:
        fail(str(error))
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.stop_event.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        runner.run()
    except AgentStopped as stopped:
        # Refused, gave up, or TLS: one line saying what and the fix, and its own status.
        err_console.print(
            f"[bold red]error:[/] {escape(str(stopped))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=stopped.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("agent stopped")
    except StamenError as error:
        fail(str(error))
    if runner.run_ended is not None:
        err_console.print(escape(runner.run_ended), highlight=False, soft_wrap=True)
    raise typer.Exit(code=AgentExit.RUN_ENDED)


def _client_app(
    dataset: str, partition: str, alpha: float, seed: int, pid: int, num_partitions: int
) -> ClientApp:
    """The Stamen ClientApp over this device's share of ``dataset``, checked up front."""
    from stamen.client import FleetData, client_app, device_data
    from stamen.config import load_config

    config = load_config(
        overrides={"data.dataset": dataset, "data.partition": partition, "data.alpha": alpha}
    )
    fleet = FleetData(config.data, num_devices=num_partitions, seed=seed)
    device_data(fleet, pid)  # a missing file or a bad partition id fails here, in one line
    return client_app(fleet)


@agent_app.command("keygen")
def keygen(
    state_dir: Annotated[
        Path, typer.Option(help="Where the agent keeps its key and state.")
    ] = DEFAULT_STATE,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create this device's Ed25519 key pair; register device.pub on the server."""
    from stamen.client.agent.state import AgentStateStore
    from stamen.contract.edge import device_id, public_bytes
    from stamen.core.errors import StamenError

    store = AgentStateStore(state_dir)
    try:
        key = store.create_key(overwrite=force)
    except StamenError as error:
        fail(str(error))
        return
    ident = device_id(public_bytes(key.public_key()))
    console.print(f"[green]device key[/] {store.key_path} (id {ident[:12]})")
    console.print(
        f"register it on the server: stamen devices register {store.public_key_path} --name NAME"
    )
