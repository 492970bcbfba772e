"""``stamen certs``: a CA, a TLS server certificate and the model-signing key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from stamen.cli.output import console, fail

certs_app = typer.Typer(
    help="Certificates for an edge server: CA, TLS certificate, model-signing key.",
    no_args_is_help=True,
)


@certs_app.command("init")
def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the files.", show_default=True)
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Name or IP devices use to reach the server (repeatable). "
            "[default: localhost, 127.0.0.1 and this machine's hostname]",
            show_default=False,
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create ca.pem/ca.key, server.pem/server.key and model-signing.key/.pub.

    Copy [bold]ca.pem[/] and [bold]model-signing.pub[/] to each device; keep the
    keys on the server (and ca.key offline if you can).
    """
    from stamen.core.errors import StamenError
    from stamen.server.edge.certs import init_certs

    hosts = host or ["localhost", "127.0.0.1", socket.gethostname()]
    try:
        paths = init_certs(directory, hosts=list(dict.fromkeys(hosts)), days=days, overwrite=force)
    except StamenError as error:
        fail(str(error))
        return
    console.print(f"[green]wrote[/] {directory}/ for hosts {', '.join(dict.fromkeys(hosts))}")
    console.print(f"  devices need: {paths.ca_cert} and {paths.signing_pub}")
