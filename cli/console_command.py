"""``stamen console``: the operator console, and the connection options it shares with status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stamen.cli.output import fail
from stamen.console.client import CLIENT_ENV, ConnectionSettings
from stamen.core.errors import ConfigError, StamenError

ServerOption = Annotated[
    str, typer.Option("--server", help="The monitor's HOST:PORT.", show_default=False)
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar=CLIENT_ENV, help="Operator or read-only token.", show_default=False
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Read the token from this file (e.g. the run's monitor-token).", show_default=False
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--tls-ca", help="PEM CA certificate: connect with TLS.", show_default=False),
]
ServerNameOption = Annotated[
    str | None,
    typer.Option(help="The name the server's certificate carries.", show_default=False),
]


def read_token_file(path: Path) -> str:
    """The first token in ``path``: a bare token, or a ``<role> <token>`` line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read token file {path}: {error.strerror}") from None
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if parts:
            return parts[-1]
    raise ConfigError(f"token file {path} holds no token")


def connection(
    server: str,
    token: str | None,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_server_name: str | None,
) -> ConnectionSettings:
    """Validated connection settings from the shared options."""
    if token is None and token_file is not None:
        token = read_token_file(token_file)
    return ConnectionSettings(server, token, tls_ca=tls_ca, tls_server_name=tls_server_name)


def console_command(
    server: ServerOption,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls_ca: CaOption = None,
    tls_server_name: ServerNameOption = None,
) -> None:
    """Watch and steer a live federation: rounds, devices, events; pause, resume, stop.

    Keys: p pause, r resume, s stop (asks first), +/- devices per round, o sort
    devices, / filter them (state:NAME tier:NAME or id digits), PgUp/PgDn/Home/End
    page through them, q quit. It reconnects when the server restarts, and stops
    once the run has ended and its monitor has closed.

    Example: [bold]stamen console --server 127.0.0.1:7777 --token-file runs/x/monitor-token[/]
    """
    try:
        settings = connection(server, token, token_file, tls_ca, tls_server_name)
    except StamenError as error:
        fail(str(error))
    try:
        from stamen.console.app import ConsoleApp
    except ImportError:
        fail("the console needs Textual: pip install 'stamen[console]'")
    ConsoleApp(settings).run()
