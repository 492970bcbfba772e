"""One connection from an agent to an edge server: channel, join, signed upload, heartbeat.

Examples:
    >>> backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(0))
    >>> delays = [backoff.next_delay() for _ in range(6)]
    >>> all(0 <= d <= 8.0 for d in delays)
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stamen.contract.edge import (
    PROTOCOL_VERSION,
    EdgeProtocolError,
    challenge_message,
    device_id,
    edge_error_of,
    public_bytes,
    upload_chunks,
)
from stamen.core.errors import ConfigError
from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc

CALL_TIMEOUT = 15.0
FATAL_CODES = frozenset(
    {
        edge_pb2.ERROR_CODE_UNKNOWN_DEVICE,
        edge_pb2.ERROR_CODE_REVOKED_DEVICE,
        edge_pb2.ERROR_CODE_BAD_SIGNATURE,
        edge_pb2.ERROR_CODE_BAD_REQUEST,
    }
)
"""Refusals that another attempt cannot fix: the agent stops and says why."""


class Backoff:
    """Exponential backoff with full jitter: a delay uniform in [0, min(cap, base * 2^n)]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The next delay, growing with each failure."""
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


@dataclass(frozen=True)
class SessionInfo:
    """What the server granted at join."""

    token: str
    node_id: int
    heartbeat_seconds: float
    max_payload_bytes: int
    chunk_bytes: int
    expires_unix: float = 0.0
    """When the server will consider the session expired (0: it did not say)."""


def open_channel(address: str, ca_cert: Path | None) -> grpc.Channel:
    """A gRPC channel to ``address``: TLS trusting ``ca_cert``, or plain text when None."""
    options = [
        ("grpc.max_receive_message_length", 256 * 2**20),
        ("grpc.max_send_message_length", 8 * 2**20),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 0),
        # One connection per channel, even when one process holds many (load tests).
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if ca_cert is None:
        return grpc.insecure_channel(address, options=options)
    try:
        root = ca_cert.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the CA certificate {ca_cert}: {error.strerror}") from None
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root), options=options)


class EdgeConnection:
    """The agent's calls on one channel; failures raise ``grpc.RpcError`` or
    :class:`EdgeProtocolError` (when the server sent a typed error)."""

    def __init__(self, channel: grpc.Channel, key: Ed25519PrivateKey) -> None:
        self.channel = channel
        self.stub = edge_pb2_grpc.EdgeServiceStub(channel)
        self.key = key
        self.public_key = public_bytes(key.public_key())
        self.device_id = device_id(self.public_key)
        self._whole_uploads = True
        """Whether to send one-chunk uploads as one message (until a server says it cannot)."""

    def join(self, renews: str = "") -> SessionInfo:
        """Prove this device's identity and open a session; ``renews``: the token of this
        device's (expired) session to carry on, with its task stream and pending tasks."""
        challenge = _call(
            self.stub.Join,
            edge_pb2.JoinRequest(
                protocol_version=PROTOCOL_VERSION,
                device_id=self.device_id,
                public_key=self.public_key,
            ),
        )
        signature = self.key.sign(challenge_message(challenge.nonce, self.device_id))
        session = _call(
            self.stub.Authenticate,
            edge_pb2.AuthenticateRequest(
                challenge_id=challenge.challenge_id,
                device_id=self.device_id,
                signature=signature,
                renews=renews,
            ),
        )
        return SessionInfo(
            token=session.token,
            node_id=int(session.node_id),
            heartbeat_seconds=session.heartbeat_seconds or 5.0,
            max_payload_bytes=int(session.max_payload_bytes),
            chunk_bytes=int(session.chunk_bytes) or 256 * 1024,
            expires_unix=float(session.expires_unix),
        )

    def tasks(self, session: SessionInfo) -> Iterator[edge_pb2.Task]:
        """The server's task stream; ends when the server closes it."""
        stream = self.stub.Tasks(edge_pb2.TaskStreamRequest(session=session.token))
        try:
            yield from stream
        except grpc.RpcError as error:
            raise edge_error_of(error) or error from None
        finally:
            stream.cancel()

    def upload(
        self, session: SessionInfo, task: edge_pb2.Task, data: bytes, *, is_error: bool = False
    ) -> edge_pb2.UploadAck:
        """Send the reply to ``task`` signed with this device's key: as one message where it
        fits in one chunk, else in chunks."""

        def chunks() -> Iterator[edge_pb2.UploadChunk]:
            return upload_chunks(
                self.key, session.token, task, data, session.chunk_bytes, is_error=is_error
            )

        ack: edge_pb2.UploadAck
        if len(data) <= session.chunk_bytes and self._whole_uploads:
            try:
                ack = _call(self.stub.UploadWhole, next(chunks()), timeout=120.0)
                return ack
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._whole_uploads = False  # a server from before UploadWhole
        ack = _call(self.stub.Upload, chunks(), timeout=120.0)
        return ack

    def heartbeat(self, session: SessionInfo) -> float:
        """Tell the server this device is alive; returns the seconds until the next heartbeat
        the server asks for (0: it did not say)."""
        reply = _call(
            self.stub.Heartbeat, edge_pb2.HeartbeatRequest(session=session.token), timeout=5.0
        )
        return float(reply.heartbeat_seconds)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def _call(method: Any, request: Any, *, timeout: float = CALL_TIMEOUT) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise edge_error_of(error) or error from None


def is_fatal(error: EdgeProtocolError) -> bool:
    """Whether retrying cannot help."""
    return error.code in FATAL_CODES
