"""SIGTERM stops a run the way Ctrl-C does.

Job schedulers, systemd and ``timeout`` send SIGTERM, whose default action
ends the process at once: no results written, and nothing to stop its
workers. Inside :func:`terminate_as_interrupt`, SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, so every ``except
KeyboardInterrupt`` that already makes Ctrl-C clean (the pool killing its
workers, the results so far written) serves both.

Examples:
    >>> import os, signal
    >>> with terminate_as_interrupt():
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ...     except KeyboardInterrupt as stop:
    ...         print(signal_name(stop))
    SIGTERM
    >>> signal_name(KeyboardInterrupt())
    'SIGINT'
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as on Ctrl-C."""


def signal_name(stop: KeyboardInterrupt) -> str:
    """The signal behind an interrupt: ``"SIGTERM"`` or (Ctrl-C) ``"SIGINT"``."""
    return "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by this interrupt's signal: 128 + its number."""
    return 128 + int(signal.Signals[signal_name(stop)])


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
