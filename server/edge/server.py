"""The edge server: a ``grpc.aio`` server carrying the edge service for an :class:`EdgeGrid`.

Build it with :class:`EdgeServer`, then run the ServerApp on ``EdgeServer.grid``
in any thread: the grid is synchronous, and the gRPC server runs on an event
loop in a thread of its own (``stamen-edge-io``). No thread is held per
connected device: an idle device costs its TLS connection and one suspended
coroutine. Add further ``grpc.aio`` servicers to ``EdgeServer.grpc_server``
before :meth:`EdgeServer.start`. When the run ends, :meth:`EdgeServer.stop`
with ``ended`` tells every connected agent why before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio

from stamen.config import require
from stamen.contract.edge import load_private_key
from stamen.core.errors import ConfigError
from stamen.protos.edge.v1 import edge_pb2_grpc
from stamen.server.edge.certs import CertPaths
from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.limits import JoinLimits
from stamen.server.edge.registry import DeviceRegistry
from stamen.server.edge.rounds import EdgeRoundStats, RunEnd
from stamen.server.edge.servicer import (
    DEFAULT_MAX_HEARTBEATS_PER_SECOND,
    DEFAULT_SESSION_TTL,
    EdgeServicer,
)

LOG = logging.getLogger("stamen.server.edge")
T = TypeVar("T")

SWEEPS_PER_HEARTBEAT = 4
"""Presence and the registry are checked this many times per (shortest) heartbeat period."""


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
    max_heartbeats_per_second: float = DEFAULT_MAX_HEARTBEATS_PER_SECOND
    """Heartbeat periods grow past ``heartbeat_seconds`` as the fleet grows, so that the
    fleet's heartbeats stay below this rate (10,000 devices: one every 50 s each)."""
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
        require(
            self.max_heartbeats_per_second > 0,
            "edge heartbeat rate",
            "> 0",
            self.max_heartbeats_per_second,
        )
        require(
            0 < self.session_ttl_seconds <= 30 * 86400,
            "edge session TTL",
            "> 0 and <= 30 days (in seconds)",
            self.session_ttl_seconds,
        )


class EdgeServer:
    """A ``grpc.aio`` server with the edge service, its grid and its device registry.

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
        self.servicer = EdgeServicer(
            self.grid,
            self.registry,
            max_payload_bytes=settings.max_payload_bytes,
            heartbeat_seconds=settings.heartbeat_seconds,
            chunk_bytes=settings.chunk_bytes,
            session_ttl=settings.session_ttl_seconds,
            join_limits=settings.join_limits,
            max_heartbeats_per_second=settings.max_heartbeats_per_second,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stamen-edge-io", daemon=True
        )
        self._thread.start()
        self._sweeper: asyncio.Task[None] | None = None
        self.grpc_server: aio.Server = self._on_loop(self._make_server())
        self.port = 0

    async def _make_server(self) -> aio.Server:
        # grpc.aio binds a server to the loop it is made on: this one.
        limit = self.settings.chunk_bytes + 64 * 1024
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", max(limit, 4 * 2**20)),
                ("grpc.max_send_message_length", 256 * 2**20),
                ("grpc.so_reuseport", 0),
                # TLS frames of 4 KiB: each connection keeps frame buffers once it has
                # sent anything, about 19 KiB less per device than the 16 KiB default.
                ("grpc.tsi.max_frame_size", 4096),
                # Dead peers (no FIN: power cut, lost network) are found by pings.
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        edge_pb2_grpc.add_EdgeServiceServicer_to_server(self.servicer, server)
        return server

    def start(self) -> int:
        """Bind and start serving; returns the port."""
        credentials = None
        if not self.settings.insecure:
            paths = CertPaths(self.settings.certs_dir)
            paths.require_server_files()
            credentials = grpc.ssl_server_credentials(
                [(paths.server_key.read_bytes(), paths.server_cert.read_bytes())]
            )
        self.port = self._on_loop(self._start(credentials))
        LOG.info(
            "edge server on port %d (%s)", self.port, "insecure" if credentials is None else "TLS"
        )
        return self.port

    async def _start(self, credentials: grpc.ServerCredentials | None) -> int:
        address = self.settings.address
        try:
            if credentials is None:
                port = self.grpc_server.add_insecure_port(address)
            else:
                port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc says "Failed to bind" this way
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {address}: address in use?")
        await self.grpc_server.start()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        return port

    async def _sweep_forever(self) -> None:
        every = self.settings.heartbeat_seconds / SWEEPS_PER_HEARTBEAT
        while True:
            await asyncio.sleep(every)
            try:
                self.servicer.sweep()
            except Exception:  # a sweep must never stop the sweeping
                LOG.exception("edge presence sweep failed")

    def stop(self, grace: float = 1.0, *, ended: RunEnd | None = None) -> None:
        """Close every device stream and stop serving.

        With ``ended``, every connected agent is first told that the run ended and
        why, and given up to ``grace`` seconds to receive it.
        """
        if not self._thread.is_alive():
            return
        if ended is not None:
            limit = time.monotonic() + grace
            self.grid.end_run(ended, within=grace)
            while self.grid.get_node_ids() and time.monotonic() < limit:
                time.sleep(0.05)
        self.grid.close()
        with contextlib.suppress(Exception):
            self._on_loop(self._stop(grace), timeout=grace + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _stop(self, grace: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.grpc_server.stop(grace)
        # What gRPC left running (streams of devices that never read their last message)
        # ends here, not as "Task was destroyed but it is pending" when the loop closes.
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)

    def _on_loop(self, work: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``work`` on the server's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)
