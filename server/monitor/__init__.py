"""The monitor service: live round events, devices, run status and controls over gRPC.

The Prometheus endpoint (``start_metrics``) needs ``prometheus-client``
(``pip install 'stamen[console]'``); it is imported on first use.
"""

from typing import Any

from stamen.server.monitor.auth import Role, TokenStore, generate_token, load_tokens
from stamen.server.monitor.devices import DeviceRecord, DeviceStatus, DeviceTable
from stamen.server.monitor.grid import ObservedGrid
from stamen.server.monitor.service import MonitorServer, MonitorSettings, start_monitor
from stamen.server.monitor.session import MonitoredRun
from stamen.server.monitor.state import MonitorState

__all__ = [
    "DeviceRecord",
    "DeviceStatus",
    "DeviceTable",
    "MetricsServer",
    "MonitorServer",
    "MonitorSettings",
    "MonitorState",
    "MonitoredRun",
    "ObservedGrid",
    "Role",
    "TokenStore",
    "generate_token",
    "load_tokens",
    "start_metrics",
    "start_monitor",
]


def __getattr__(name: str) -> Any:
    if name in ("MetricsServer", "start_metrics"):
        from stamen.server.monitor import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
