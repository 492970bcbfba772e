"""The ``stamen.monitor.v1.Monitor`` gRPC service and the server that hosts it.

Examples:
    >>> from stamen.server.monitor.auth import Role, TokenStore
    >>> tokens = TokenStore({"operator-token-0001": Role.OPERATOR})
    >>> server = start_monitor(MonitorSettings(port=0, tokens=tokens), MonitorState())
    >>> server.port > 0
    True
    >>> server.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from stamen.contract.monitor import token_from_metadata
from stamen.core.errors import ConfigError
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.protos.monitor.v1 import monitor_pb2_grpc as pb_grpc
from stamen.server.control import ControlRefused, RunControl
from stamen.server.monitor.auth import Role, TokenStore
from stamen.server.monitor.devices import device_message
from stamen.server.monitor.state import MonitorState

DEVICE_INTERVAL = (0.05, 0.5, 10.0)
"""Seconds between two device-table messages: the least, the default, the most."""


@dataclass(frozen=True)
class MonitorSettings:
    """Where and how the monitor listens.

    Args:
        host: the address to bind (``127.0.0.1`` keeps it on this machine).
        port: the TCP port; 0 picks a free one.
        tls_cert: PEM certificate chain; with ``tls_key`` the service uses TLS.
        tls_key: PEM private key of ``tls_cert``.
        tokens: the tokens accepted; at least one is required.
    """

    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: TokenStore = field(default_factory=TokenStore)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"monitor port must be in 0..65535; got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("monitor TLS needs both a certificate and a key (PEM files)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"monitor TLS file not found: {path}")
        if not self.tokens.tokens:
            raise ConfigError("the monitor needs at least one token")

    @property
    def tls(self) -> bool:
        """Whether the service uses TLS."""
        return self.tls_cert is not None


class MonitorServicer(pb_grpc.MonitorServicer):
    """Serves one federation's :class:`MonitorState`; controls go to its :class:`RunControl`."""

    def __init__(
        self, state: MonitorState, tokens: TokenStore, control: RunControl | None = None
    ) -> None:
        self.state = state
        self.tokens = tokens
        self.control = control
        self.closing = threading.Event()

    def WatchRounds(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Replay the history after ``after_sequence``, then stream new events.

        When the service stops, the events not sent yet (the run's end) go out
        before the stream ends.
        """
        self._authorize(context)
        sequence = int(request.after_sequence)
        while context.is_active():
            closing = self.closing.is_set()
            for event in self.state.wait_for_events(sequence, timeout=0 if closing else 0.25):
                yield event
                sequence = int(event.sequence)
            if closing:
                return

    def WatchDevices(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """The device table (or what changed since the client's version), then its changes.

        Changes are merged into one message per interval, so a round that
        touches a thousand devices costs a few messages, not a thousand.
        """
        self._authorize(context)
        least, default, most = DEVICE_INTERVAL
        interval = request.min_interval_ms / 1000 or default
        interval = min(max(interval, least), most)
        table_id = self.state.table_id
        version = int(request.after_version)
        snapshot = request.table_id != table_id or version > self.state.device_version
        if snapshot:
            version = 0
        first = True
        while context.is_active():
            closing = self.closing.is_set()
            if not first and not closing:
                self.state.wait_for_device_changes(version, timeout=0.25)
            new_version, changed, count = self.state.device_changes(version)
            if first or changed:
                yield pb.DeviceChanges(
                    table_id=table_id,
                    version=new_version,
                    snapshot=snapshot,
                    devices=changed,
                    num_devices=count,
                )
                version, first, snapshot = new_version, False, False
                # Changes that come in the meantime go out together in the next message.
                self.closing.wait(interval)
            if closing:
                return

    def ListDevices(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Every device seen so far."""
        self._authorize(context)
        return pb.DeviceList(devices=[device_message(d) for d in self.state.devices()])

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The run status, with the caller's role."""
        role = self._authorize(context)
        status = self.state.status()
        status.role = role.value
        return status

    def Control(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Pause, resume, stop or change a setting (operator tokens only)."""
        role = self._authorize(context, operator=True)
        if self.control is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this run cannot be controlled")
        try:
            message = self._act(request)
        except ControlRefused as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        status = self.state.status()
        status.role = role.value
        return pb.ControlReply(message=message, status=status)

    def _act(self, request: Any) -> str:
        control = self.control
        assert control is not None
        action = request.action
        if action == pb.CONTROL_ACTION_PAUSE:
            return control.pause()
        if action == pb.CONTROL_ACTION_RESUME:
            return control.resume()
        if action == pb.CONTROL_ACTION_STOP:
            return control.stop()
        if action == pb.CONTROL_ACTION_SET_DEVICES_PER_ROUND:
            return control.set_devices_per_round(int(request.devices_per_round))
        if action == pb.CONTROL_ACTION_SET_DEADLINE:
            return control.set_deadline(float(request.deadline_seconds))
        raise ControlRefused(f"unknown control action {action}")

    def _authorize(self, context: grpc.ServicerContext, operator: bool = False) -> Role:
        token = token_from_metadata(context.invocation_metadata())
        if token is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no token: the monitor needs an operator or read-only token "
                "(--token or STAMEN_TOKEN)",
            )
        role = self.tokens.role_of(token)
        if role is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid for this server")
        assert role is not None
        if operator and role is not Role.OPERATOR:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this token is read-only: it cannot pause, resume, stop or change settings",
            )
        return role


class MonitorServer:
    """A running monitor service; :meth:`stop` ends its streams and frees the port."""

    def __init__(self, server: grpc.Server, servicer: MonitorServicer, host: str, port: int):
        self.server = server
        self.servicer = servicer
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` to give ``stamen console --server``."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        """End every stream and stop serving."""
        self.servicer.closing.set()
        self.server.stop(grace).wait()


def start_monitor(
    settings: MonitorSettings, state: MonitorState, control: RunControl | None = None
) -> MonitorServer:
    """Serve ``state`` (and ``control``) on ``settings.host:settings.port``."""
    servicer = MonitorServicer(state, settings.tokens, control or state.control)
    # Each console holds two streams (rounds, devices) and polls the status.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="monitor"))
    pb_grpc.add_MonitorServicer_to_server(servicer, server)
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise ConfigError(f"monitor cannot listen on {address}: {error}") from None
    if port == 0:
        raise ConfigError(f"monitor cannot listen on {address}: the port is taken")
    server.start()
    return MonitorServer(server, servicer, settings.host, port)
