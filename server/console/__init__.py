"""The operator console (``stamen console``) and the monitor client it shares with ``stamen status``."""

from stamen.server.console.app import ConsoleApp
from stamen.server.console.client import ConnectionSettings, MonitorClient, MonitorError, snapshot
from stamen.server.console.view import RunView

__all__ = [
    "ConnectionSettings",
    "ConsoleApp",
    "MonitorClient",
    "MonitorError",
    "RunView",
    "snapshot",
]
