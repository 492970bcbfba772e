"""Interrupting real ``stamen`` processes the way a terminal does."""

from __future__ import annotations

import signal


def ctrl_c_delivered() -> None:
    """``preexec_fn`` for a child that must feel Ctrl-C: a shell that runs the tests in the
    background (``make test &``, ``nohup``) starts them with SIGINT ignored, and a child
    inherits that, so SIGINT would not interrupt it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
