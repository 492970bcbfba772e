"""The ``stamen`` command line: the app, its commands, and the entry point.

The commands live in their own ``*_command.py`` modules, and the options of
``simulate`` and ``server`` in :mod:`stamen.cli.option_table`; nothing in
``stamen.cli`` imports this module (an import-linter contract keeps it so).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from stamen.cli.agent_command import agent_app
from stamen.cli.certs_command import certs_app
from stamen.cli.console_command import console_command
from stamen.cli.devices_command import devices_app
from stamen.cli.export_command import export
from stamen.cli.output import console
from stamen.cli.precision_command import plan_precision_command
from stamen.cli.server_command import server
from stamen.cli.simulate_command import simulate
from stamen.cli.status_command import status_command
from stamen.cli.strategies_command import strategies
from stamen.core import __version__

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


app.command("simulate")(simulate)
app.command("strategies")(strategies)
app.command("console")(console_command)
app.command("status")(status_command)
app.command("server")(server)
app.add_typer(agent_app, name="agent")
app.add_typer(certs_app, name="certs")
app.add_typer(devices_app, name="devices")
app.command("export")(export)
app.command("plan-precision")(plan_precision_command)


def main() -> None:
    """Entry point of the ``stamen`` script."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()
