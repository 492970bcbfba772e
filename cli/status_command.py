"""``stamen status``: one JSON snapshot of a live federation, for scripts."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stamen.cli.console_command import (
    CaOption,
    ServerNameOption,
    ServerOption,
    TokenFileOption,
    TokenOption,
    connection,
)
from stamen.cli.output import fail
from stamen.console.client import MonitorClient, snapshot
from stamen.core.errors import StamenError


def status_command(
    server: ServerOption,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls_ca: CaOption = None,
    tls_server_name: ServerNameOption = None,
    devices: Annotated[
        bool, typer.Option("--devices", help="Include every device, not just counts.")
    ] = False,
) -> None:
    """Print the run's status, its last round and its devices as one JSON object.

    Example: [bold]stamen status --server 127.0.0.1:7777 --token-file runs/x/monitor-token[/]
    """
    try:
        client = MonitorClient(connection(server, token, token_file, tls_ca, tls_server_name))
        try:
            result = snapshot(client, with_devices=devices)
        finally:
            client.close()
    except StamenError as error:
        fail(str(error))
    typer.echo(json.dumps(result, indent=2))
