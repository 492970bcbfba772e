"""The operator console (``stamen console``) and the monitor client ``stamen status`` shares.

``ConsoleApp`` needs Textual (``pip install 'stamen[console]'``); it is imported
on first use, so the client works without it.
"""

from typing import Any

from stamen.console.client import ConnectionSettings, MonitorClient, MonitorError, snapshot
from stamen.console.view import RunView

__all__ = [
    "ConnectionSettings",
    "ConsoleApp",
    "MonitorClient",
    "MonitorError",
    "RunView",
    "snapshot",
]


def __getattr__(name: str) -> Any:
    if name == "ConsoleApp":
        from stamen.console.app import ConsoleApp

        return ConsoleApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
