"""``stamen devices``: the registry of device public keys an edge server admits."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from stamen.cli.output import console, fail

devices_app = typer.Typer(
    help="Register, list and revoke the devices an edge server admits.", no_args_is_help=True
)

RegistryOption = Annotated[
    Path, typer.Option("--registry", help="The registry file the server reads.")
]


@devices_app.command("register")
def register(
    public_key: Annotated[Path, typer.Argument(help="The device's device.pub (PEM).")],
    name: Annotated[
        str | None, typer.Option(help="A name for the device. [default: its id]")
    ] = None,
    registry: RegistryOption = Path("devices.json"),
) -> None:
    """Admit a device's public key (made by [bold]stamen agent keygen[/])."""
    from stamen.contract.edge import load_public_key
    from stamen.core.errors import StamenError
    from stamen.server.edge.registry import DeviceRegistry

    try:
        entry = DeviceRegistry(registry).register(load_public_key(public_key), name=name)
    except StamenError as error:
        fail(str(error))
        return
    console.print(f"[green]registered[/] {entry.name} ({entry.device_id[:12]}) in {registry}")


@devices_app.command("list")
def list_devices(registry: RegistryOption = Path("devices.json")) -> None:
    """List registered and revoked devices."""
    from rich.table import Table

    from stamen.core.errors import StamenError
    from stamen.server.edge.registry import DeviceRegistry

    try:
        entries = DeviceRegistry(registry).entries()
    except StamenError as error:
        fail(str(error))
        return
    table = Table("name", "device id", "registered", "status")
    for entry in entries:
        when = datetime.datetime.fromtimestamp(entry.registered_unix, datetime.UTC)
        table.add_row(
            entry.name,
            entry.device_id[:16],
            f"{when:%Y-%m-%d %H:%M}",
            "[red]revoked[/]" if entry.revoked else "[green]registered[/]",
        )
    console.print(table)
    console.print(f"{len(entries)} devices in {registry}")


@devices_app.command("revoke")
def revoke(
    device: Annotated[str, typer.Argument(help="The device's name or id (prefix).")],
    registry: RegistryOption = Path("devices.json"),
) -> None:
    """Refuse a device from now on; a running server drops it at its next call."""
    from stamen.core.errors import StamenError
    from stamen.server.edge.registry import DeviceRegistry

    try:
        entry = DeviceRegistry(registry).revoke(device)
    except StamenError as error:
        fail(str(error))
        return
    console.print(f"[yellow]revoked[/] {entry.name} ({entry.device_id[:12]})")
