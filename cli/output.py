"""Where every command writes: the consoles, the one-line error, the log setup."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from stamen.core.errors import StamenError

console = Console()
err_console = Console(stderr=True)

USAGE_ERROR = 2
"""The exit status of a bad flag, config value or input file (click's, for its own errors)."""


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=USAGE_ERROR)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a :class:`StamenError` raised inside the block into :func:`fail`'s one line."""
    try:
        yield
    except StamenError as error:
        fail(str(error))


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
