"""The monitor service: live round events, devices, run status and controls over gRPC."""

from stamen.server.monitor.auth import Role, TokenStore, generate_token, load_tokens
from stamen.server.monitor.grid import ObservedGrid
from stamen.server.monitor.metrics import MetricsServer, start_metrics
from stamen.server.monitor.service import MonitorServer, MonitorSettings, start_monitor
from stamen.server.monitor.state import DeviceRecord, DeviceStatus, MonitorState

__all__ = [
    "DeviceRecord",
    "DeviceStatus",
    "MetricsServer",
    "MonitorServer",
    "MonitorSettings",
    "MonitorState",
    "ObservedGrid",
    "Role",
    "TokenStore",
    "generate_token",
    "load_tokens",
    "start_metrics",
    "start_monitor",
]
