"""The edge server: Flower's Grid over real devices on Stamen's gRPC edge protocol."""

from stamen.server.edge.certs import CertPaths, init_certs
from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.limits import JoinLimits, RateLimit
from stamen.server.edge.registry import DeviceEntry, DeviceRegistry, DeviceStatus
from stamen.server.edge.rounds import EdgeRoundStats, RunEnd, RunEndReason
from stamen.server.edge.server import EdgeServer, EdgeServerSettings
from stamen.server.edge.servicer import EdgeServicer

__all__ = [
    "CertPaths",
    "DeviceEntry",
    "DeviceRegistry",
    "DeviceStatus",
    "EdgeGrid",
    "EdgeRoundStats",
    "EdgeServer",
    "EdgeServerSettings",
    "EdgeServicer",
    "JoinLimits",
    "RateLimit",
    "RunEnd",
    "RunEndReason",
    "init_certs",
]
