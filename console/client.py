"""A small client of the monitor service, shared by ``stamen console`` and ``stamen status``.

Every gRPC failure becomes a :class:`MonitorError` whose message is one plain
line: why the server refused, or that it cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def _describe(error: grpc.RpcError, server: str) -> MonitorError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code is grpc.StatusCode.UNAVAILABLE:
        return MonitorError(f"cannot reach the monitor at {server}: {details}", code)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return MonitorError(f"refused: {details}", code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return MonitorError(f"not allowed: {details}", code)
    return MonitorError(f"{details}", code)


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

    def watch(self, after_sequence: int = 0) -> Iterator[Any]:
        """Round events: the history after ``after_sequence``, then live ones."""
        stream = self.stub.WatchRounds(
            pb.WatchRequest(after_sequence=after_sequence), metadata=self.metadata
        )
        try:
            yield from stream
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.CANCELLED:
                return
            raise _describe(error, self.settings.server) from None
        finally:
            stream.cancel()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise _describe(error, self.settings.server) from None


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
