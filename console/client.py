"""A small client of the monitor service, shared by ``stamen console`` and ``stamen status``.

Every gRPC failure becomes a :class:`MonitorError` whose message is one plain
line: why the server refused, or that it cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from stamen.contract.monitor import bearer
from stamen.core.errors import ConfigError, StamenError
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.protos.monitor.v1 import monitor_pb2_grpc as pb_grpc

CLIENT_ENV = "STAMEN_TOKEN"
"""The token ``stamen console`` and ``stamen status`` send when ``--token`` is not given."""


class MonitorError(StamenError):
    """A monitor call failed; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def refused(self) -> bool:
        """The server refused the token (retrying will not help)."""
        return self.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach a monitor.

    Args:
        server: ``HOST:PORT``.
        token: the operator or read-only token.
        tls_ca: PEM CA certificate; given, the connection uses TLS and checks the
            server's certificate against it.
        tls_server_name: the name the certificate must carry, if not the host.
    """

    server: str
    token: str | None
    tls_ca: Path | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--server must be HOST:PORT; got {self.server!r}")
        if self.tls_ca is not None and not self.tls_ca.is_file():
            raise ConfigError(f"TLS CA file not found: {self.tls_ca}")


UNREACHABLE_CAUSES = (
    ("Connection refused", "connection refused (is the server running, on this port?)"),
    ("Domain name not found", "the host name does not resolve"),
    ("resolving", "the host name does not resolve"),
    ("Hostname Verification", "TLS: the certificate does not name this host (--tls-server-name)"),
    ("No match found for server name", "TLS: the certificate does not name this host"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: the server's certificate is not signed by --tls-ca"),
    ("WRONG_VERSION_NUMBER", "TLS on this side only: the server is plain text (drop --tls-ca)"),
    ("handshake", "TLS handshake failed"),
    ("Deadline Exceeded", "no answer in time"),
)
"""Substrings of gRPC's connection errors, and what they mean in plain words."""


def unreachable_cause(details: str, tls: bool) -> str:
    """gRPC's connection error text as a few plain words (never the raw C-core text).

    Examples:
        >>> unreachable_cause("failed to connect to all addresses; last error: UNKNOWN: "
        ...     "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused", False)
        'connection refused (is the server running, on this port?)'
        >>> unreachable_cause("last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed", False)
        'the connection was closed (a TLS server? pass --tls-ca)'
    """
    for needle, cause in UNREACHABLE_CAUSES:
        if needle.lower() in details.lower():
            return cause
    if "Socket closed" in details and not tls:
        return "the connection was closed (a TLS server? pass --tls-ca)"
    return "the connection was closed"


def _describe(error: grpc.RpcError, settings: ConnectionSettings) -> MonitorError:
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        cause = unreachable_cause(details, tls=settings.tls_ca is not None)
        return MonitorError(f"cannot reach the monitor at {settings.server}: {cause}", code)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return MonitorError(f"refused: {details}", code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return MonitorError(f"not allowed: {details}", code)
    # The monitor's own refusals (FAILED_PRECONDITION, UNIMPLEMENTED) are plain words already.
    return MonitorError(details.splitlines()[0] if details else str(code), code)


class MonitorClient:
    """Calls the monitor service at ``settings.server``."""

    def __init__(self, settings: ConnectionSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        if settings.tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(settings.tls_ca.read_bytes())
            options = []
            if settings.tls_server_name:
                options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
            self.channel = grpc.secure_channel(settings.server, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(settings.server)
        self.stub = pb_grpc.MonitorStub(self.channel)
        self.metadata = bearer(settings.token) if settings.token else ()

    def close(self) -> None:
        """Close the channel (and any stream on it)."""
        self.channel.close()

    def status(self) -> Any:
        """The ``RunStatus``."""
        return self._call(self.stub.GetStatus, pb.StatusRequest())

    def devices(self) -> list[Any]:
        """Every ``Device``."""
        return list(self._call(self.stub.ListDevices, pb.ListDevicesRequest()).devices)

    def control(
        self, action: pb.ControlAction, *, devices_per_round: int = 0, deadline: float = 0.0
    ) -> Any:
        """Send a control; returns the ``ControlReply``."""
        request = pb.ControlRequest(
            action=action, devices_per_round=devices_per_round, deadline_seconds=deadline
        )
        return self._call(self.stub.Control, request)

    def watch_devices(
        self, table_id: str = "", after_version: int = 0, *, interval: float = 0.0
    ) -> Generator[Any, None, None]:
        """``DeviceChanges``: a snapshot, then the devices that change as they change.

        With the ``table_id`` and ``after_version`` of an earlier message, the
        first message holds only what changed since. ``interval`` is the least
        time between two messages (0: the server's default).
        """
        request = pb.WatchDevicesRequest(
            table_id=table_id, after_version=after_version, min_interval_ms=int(interval * 1000)
        )
        yield from self._stream(self.stub.WatchDevices, request)

    def watch(self, after_sequence: int = 0) -> Iterator[Any]:
        """Round events: the history after ``after_sequence``, then live ones."""
        yield from self._stream(
            self.stub.WatchRounds, pb.WatchRequest(after_sequence=after_sequence)
        )

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        stream = method(request, metadata=self.metadata)
        try:
            yield from stream
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.CANCELLED:
                return
            raise _describe(error, self.settings) from None
        finally:
            stream.cancel()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise _describe(error, self.settings) from None


def snapshot(client: MonitorClient, with_devices: bool = False) -> dict[str, Any]:
    """One JSON-ready picture of a run: status, the last round, device counts."""
    status = client.status()
    devices = client.devices()
    states: dict[str, int] = {}
    for device in devices:
        name = pb.DeviceState.Name(device.state).removeprefix("DEVICE_STATE_").lower()
        states[name] = states.get(name, 0) + 1
    result: dict[str, Any] = {"status": _to_dict(status)}
    result["last_round"] = result["status"].pop("last_round", None)
    result["status"]["config"] = json.loads(result["status"].pop("config_json", "{}") or "{}")
    result["devices"] = {"count": len(devices), "by_state": states}
    if with_devices:
        result["devices"]["list"] = [_to_dict(d) for d in devices]
    return result


ENUM_PREFIXES = ("RUN_STATE_", "HEALTH_", "DEVICE_STATE_", "EVENT_KIND_")


def _to_dict(message: Any) -> dict[str, Any]:
    """JSON-ready: 64-bit integers as numbers, enum values as short lower-case words."""
    result: dict[str, Any] = _plain(MessageToDict(message, preserving_proto_field_name=True))
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        for prefix in ENUM_PREFIXES:
            if value.startswith(prefix):
                return value.removeprefix(prefix).lower()
    return value
