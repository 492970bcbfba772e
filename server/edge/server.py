"""The edge server: a grpcio server carrying the edge service for an :class:`EdgeGrid`.

Build it with :class:`EdgeServer`, add further servicers to ``EdgeServer.grpc_server``
(for example a monitor service) before :meth:`EdgeServer.start`, then run the
ServerApp on ``EdgeServer.grid``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from stamen.config import require
from stamen.contract.edge import load_private_key
from stamen.core.errors import ConfigError
from stamen.protos.edge.v1 import edge_pb2_grpc
from stamen.server.edge.certs import CertPaths
from stamen.server.edge.grid import EdgeGrid, EdgeRoundStats
from stamen.server.edge.limits import JoinLimits
from stamen.server.edge.registry import DeviceRegistry
from stamen.server.edge.servicer import DEFAULT_SESSION_TTL, EdgeServicer

LOG = logging.getLogger("stamen.server.edge")


@dataclass(frozen=True)
class EdgeServerSettings:
    """How the edge server listens and takes uploads.

    When a round closes (deadline, over-selection) is the federation config's
    business (``federation.deadline``, ``federation.over_selection``): the
    strategy sets it on the grid as a round policy, as on every Stamen grid.
    """

    address: str = "0.0.0.0:9443"
    """host:port to listen on; port 0 picks a free one."""
    certs_dir: Path = Path("certs")
    """Made by ``stamen certs init``: TLS certificate and the model-signing key."""
    insecure: bool = False
    """Plain-text gRPC. For tests on loopback only; models and uploads are still signed."""
    registry: Path = Path("devices.json")
    """The device registry ``stamen devices`` edits."""
    max_payload_bytes: int = 16 * 2**20
    """Uploads larger than this are refused before they are read."""
    heartbeat_seconds: float = 5.0
    chunk_bytes: int = 256 * 1024
    max_workers: int = 1024
    """Threads serving RPCs; each connected device holds one for its task stream."""
    session_ttl_seconds: float = DEFAULT_SESSION_TTL
    """A device session lasts this long; the device then authenticates again (its agent
    does so by itself, keeping its task stream and its round)."""
    join_limits: JoinLimits = field(default_factory=JoinLimits)
    """Join rate limits per key and per address, and the bounds on unanswered challenges."""

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        require(
            bool(sep and host and port.isdigit()),
            "edge address",
            "host:port",
            self.address,
        )
        require(self.max_payload_bytes > 0, "edge max payload", "> 0", self.max_payload_bytes)
        require(self.heartbeat_seconds > 0, "edge heartbeat", "> 0", self.heartbeat_seconds)
        require(
            4096 <= self.chunk_bytes <= 2**22, "edge chunk size", "4 KiB..4 MiB", self.chunk_bytes
        )
        require(self.max_workers >= 4, "edge max workers", ">= 4", self.max_workers)
        require(
            0 < self.session_ttl_seconds <= 30 * 86400,
            "edge session TTL",
            "> 0 and <= 30 days (in seconds)",
            self.session_ttl_seconds,
        )


class EdgeServer:
    """A grpcio server with the edge service, its grid and its device registry.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stamen.server.edge.certs import init_certs
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = init_certs(root / "certs", hosts=["127.0.0.1"])
        >>> server = EdgeServer(EdgeServerSettings(address="127.0.0.1:0",
        ...     certs_dir=root / "certs", registry=root / "devices.json"))
        >>> server.start() > 0
        True
        >>> server.stop()
    """

    def __init__(
        self,
        settings: EdgeServerSettings,
        *,
        on_round: Callable[[EdgeRoundStats], None] | None = None,
    ) -> None:
        self.settings = settings
        paths = CertPaths(settings.certs_dir)
        if not paths.signing_key.exists():
            raise ConfigError(
                f"{paths.signing_key} is missing; create it with: "
                f"stamen certs init {settings.certs_dir}"
            )
        self.registry = DeviceRegistry(settings.registry)
        self.registry.entries()  # a malformed registry fails here, not at the first join
        self.grid = EdgeGrid(load_private_key(paths.signing_key), on_round=on_round)
        limit = settings.chunk_bytes + 64 * 1024
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers),
            options=[
                ("grpc.max_receive_message_length", max(limit, 4 * 2**20)),
                ("grpc.max_send_message_length", 256 * 2**20),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            maximum_concurrent_rpcs=settings.max_workers,
        )
        self.servicer = EdgeServicer(
            self.grid,
            self.registry,
            max_payload_bytes=settings.max_payload_bytes,
            heartbeat_seconds=settings.heartbeat_seconds,
            chunk_bytes=settings.chunk_bytes,
            session_ttl=settings.session_ttl_seconds,
            join_limits=settings.join_limits,
        )
        edge_pb2_grpc.add_EdgeServiceServicer_to_server(self.servicer, self.grpc_server)
        self.port = 0

    def start(self) -> int:
        """Bind and start serving; returns the port."""
        if self.settings.insecure:
            port = self.grpc_server.add_insecure_port(self.settings.address)
        else:
            paths = CertPaths(self.settings.certs_dir)
            paths.require_server_files()
            credentials = grpc.ssl_server_credentials(
                [(paths.server_key.read_bytes(), paths.server_cert.read_bytes())]
            )
            port = self.grpc_server.add_secure_port(self.settings.address, credentials)
        if port == 0:
            raise ConfigError(f"cannot listen on {self.settings.address}: address in use?")
        self.grpc_server.start()
        self.port = port
        LOG.info(
            "edge server on port %d (%s)", port, "insecure" if self.settings.insecure else "TLS"
        )
        return port

    def stop(self, grace: float = 1.0) -> None:
        """Close every device stream and stop serving."""
        self.grid.close()
        self.grpc_server.stop(grace).wait(grace + 5)
