"""The gRPC servicer of ``stamen.edge.v1.EdgeService``: join, tasks, uploads, heartbeats.

Every refusal ends the call with a gRPC status plus a typed ``EdgeError`` in the
trailers (:func:`stamen.contract.edge.abort`), and none of them touches a
round: an unregistered device never becomes a node, and a refused upload never
reaches the strategy.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import grpc
from flwr.app import Error, Message

from stamen.contract.edge import (
    PROTOCOL_VERSION,
    CorruptRecords,
    abort,
    challenge_message,
    device_id,
    node_id_of,
    parse_records,
    sha256,
    verify_signature,
)
from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc
from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.registry import DeviceRegistry, DeviceStatus

LOG = logging.getLogger("stamen.server.edge")

E = edge_pb2
CHALLENGE_SECONDS = 30.0
STALE_HEARTBEATS = 6
"""A task stream closes after this many heartbeat periods without one."""
MAX_CHALLENGES = 10_000


@dataclass
class _Session:
    node_id: int
    device_id: str
    public_key: bytes
    last_seen: float


@dataclass(frozen=True)
class _Challenge:
    device_id: str
    public_key: bytes
    nonce: bytes
    expires: float


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """Serves devices for one :class:`EdgeGrid`.

    Args:
        grid: the grid the ServerApp drives.
        registry: the public keys allowed to join.
        max_payload_bytes: larger uploads are refused before they are read.
        heartbeat_seconds: how often devices should send a heartbeat.
        chunk_bytes: the upload chunk size devices should use.
    """

    def __init__(
        self,
        grid: EdgeGrid,
        registry: DeviceRegistry,
        *,
        max_payload_bytes: int,
        heartbeat_seconds: float = 5.0,
        chunk_bytes: int = 256 * 1024,
    ) -> None:
        self.grid = grid
        self.registry = registry
        self.max_payload_bytes = max_payload_bytes
        self.heartbeat_seconds = heartbeat_seconds
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self._challenges: dict[str, _Challenge] = {}
        self._sessions: dict[str, _Session] = {}

    # -- identity ---------------------------------------------------------------------

    def Join(
        self, request: edge_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> edge_pb2.JoinChallenge:
        """Check the device's key against the registry and hand it a nonce to sign."""
        if request.protocol_version != PROTOCOL_VERSION:
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_BAD_REQUEST,
                f"protocol version {request.protocol_version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
            )
        key = bytes(request.public_key)
        if len(key) != 32 or request.device_id != device_id(key):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_BAD_REQUEST,
                "device_id must be the SHA-256 of a 32-byte Ed25519 public key",
            )
        self._check_registered(key, request.device_id, context)
        challenge_id = secrets.token_hex(16)
        nonce = secrets.token_bytes(32)
        expires = time.time() + CHALLENGE_SECONDS
        with self._lock:
            self._expire_challenges()
            self._challenges[challenge_id] = _Challenge(request.device_id, key, nonce, expires)
        return edge_pb2.JoinChallenge(challenge_id=challenge_id, nonce=nonce, expires_unix=expires)

    def Authenticate(
        self, request: edge_pb2.AuthenticateRequest, context: grpc.ServicerContext
    ) -> edge_pb2.Session:
        """Verify the signed nonce and open a session."""
        with self._lock:
            challenge = self._challenges.pop(request.challenge_id, None)
        if challenge is None or challenge.expires < time.time():
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SIGNATURE,
                "the challenge is unknown or expired; join again",
            )
        message = challenge_message(challenge.nonce, challenge.device_id)
        if request.device_id != challenge.device_id or not verify_signature(
            challenge.public_key, bytes(request.signature), message
        ):
            LOG.warning("device %s failed the join challenge", challenge.device_id[:12])
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SIGNATURE,
                "the challenge signature does not verify with the device's key",
            )
        self._check_registered(challenge.public_key, challenge.device_id, context)
        token = secrets.token_hex(24)
        node_id = node_id_of(challenge.public_key)
        with self._lock:
            # A device holds one session: joining again ends the older one.
            for old in [t for t, v in self._sessions.items() if v.node_id == node_id]:
                del self._sessions[old]
            self._sessions[token] = _Session(
                node_id, challenge.device_id, challenge.public_key, time.time()
            )
        return edge_pb2.Session(
            token=token,
            node_id=node_id,
            heartbeat_seconds=self.heartbeat_seconds,
            max_payload_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
        )

    # -- tasks --------------------------------------------------------------------------

    def Tasks(
        self, request: edge_pb2.TaskStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.Task]:
        """Stream tasks to the device for as long as it stays connected."""
        session = self._session(request.session, context)
        channel = self.grid.connect(session.node_id, session.device_id)
        try:
            while context.is_active():
                try:
                    task = channel.tasks.get(timeout=0.5)
                except queue.Empty:
                    if not self._still_welcome(request.session, session):
                        break
                    continue
                if task is None:
                    break
                yield task
        finally:
            self.grid.disconnect(channel)

    def Upload(
        self, request_iterator: Iterator[edge_pb2.UploadChunk], context: grpc.ServicerContext
    ) -> edge_pb2.UploadAck:
        """Receive one reply in chunks, check it whole, and hand it to the grid."""
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_BAD_REQUEST,
                "an upload starts with a chunk that carries its header",
            )
        header = first.header
        session = self._session(header.session, context)
        instruction = self.grid.instruction(header.task_id, session.node_id)
        if instruction is None:
            self.grid.note_late(header.task_id, session.node_id)
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_LATE,
                f"task {header.task_id[:12]} is not open for this device (its round is over)",
            )
        if header.total_bytes > self.max_payload_bytes:
            self._refuse(
                context,
                header.task_id,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                E.ERROR_CODE_PAYLOAD_TOO_LARGE,
                f"upload of {header.total_bytes} bytes exceeds the server's limit of "
                f"{self.max_payload_bytes} bytes",
            )
        data = self._receive(first, request_iterator, header, context)
        reply = self._reply(data, header, instruction, context)
        if not self.grid.deliver(header.task_id, reply):
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_LATE,
                "the round ended before this upload completed; it was dropped",
            )
        with self._lock:
            session.last_seen = time.time()
        return edge_pb2.UploadAck(task_id=header.task_id, received_bytes=len(data))

    def Heartbeat(
        self, request: edge_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> edge_pb2.HeartbeatReply:
        """Note that the device is alive."""
        session = self._session(request.session, context)
        with self._lock:
            session.last_seen = time.time()
        return edge_pb2.HeartbeatReply(server_unix=time.time())

    # -- helpers --------------------------------------------------------------------

    def _still_welcome(self, token: str, session: _Session) -> bool:
        """False once the device is revoked, joined again, or stopped its heartbeats."""
        if self.registry.status(session.public_key) is not DeviceStatus.REGISTERED:
            return False
        with self._lock:
            current = self._sessions.get(token) is session
        silent = time.time() - session.last_seen > STALE_HEARTBEATS * self.heartbeat_seconds
        if silent:
            LOG.warning("node %d sent no heartbeat for a while; closing it", session.node_id)
        return current and not silent

    def _check_registered(self, key: bytes, ident: str, context: grpc.ServicerContext) -> None:
        status = self.registry.status(key)
        if status is DeviceStatus.REGISTERED:
            return
        LOG.warning("refused %s device %s", status.value, ident[:12])
        if status is DeviceStatus.REVOKED:
            abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                E.ERROR_CODE_REVOKED_DEVICE,
                f"device {ident[:12]} was revoked on this server",
            )
        abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            E.ERROR_CODE_UNKNOWN_DEVICE,
            f"device {ident[:12]} is not registered on this server; "
            f"run: stamen devices register <its public key>",
        )

    def _session(self, token: str, context: grpc.ServicerContext) -> _Session:
        with self._lock:
            session = self._sessions.get(token)
        if session is None:
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SESSION,
                "unknown or expired session; join again",
            )
        if self.registry.status(session.public_key) is not DeviceStatus.REGISTERED:
            with self._lock:
                self._sessions.pop(token, None)
            self._check_registered(session.public_key, session.device_id, context)
        return session

    def _receive(
        self,
        first: edge_pb2.UploadChunk,
        rest: Iterator[edge_pb2.UploadChunk],
        header: edge_pb2.UploadHeader,
        context: grpc.ServicerContext,
    ) -> bytes:
        parts = [bytes(first.data)]
        size = len(first.data)
        for chunk in rest:
            size += len(chunk.data)
            if size > header.total_bytes:
                self._refuse(
                    context,
                    header.task_id,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    E.ERROR_CODE_CORRUPT_UPLOAD,
                    f"upload carries more than the {header.total_bytes} bytes its header declares",
                )
            parts.append(bytes(chunk.data))
        data = b"".join(parts)
        if len(data) != header.total_bytes or sha256(data) != bytes(header.sha256):
            self._refuse(
                context,
                header.task_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_CORRUPT_UPLOAD,
                f"upload is corrupt: {len(data)} of {header.total_bytes} bytes, "
                "or its SHA-256 does not match",
            )
        return data

    def _reply(
        self,
        data: bytes,
        header: edge_pb2.UploadHeader,
        instruction: Message,
        context: grpc.ServicerContext,
    ) -> Message:
        if header.is_error:
            error = edge_pb2.ReplyError()
            try:
                error.ParseFromString(data)
            except Exception:  # protobuf DecodeError from an untrusted peer
                self._refuse(
                    context,
                    header.task_id,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    E.ERROR_CODE_CORRUPT_UPLOAD,
                    "error reply does not parse",
                )
            return Message(Error(code=int(error.code), reason=error.reason), reply_to=instruction)
        try:
            content = parse_records(data)
        except CorruptRecords as problem:
            self._refuse(
                context,
                header.task_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_CORRUPT_UPLOAD,
                str(problem),
            )
        return Message(content, reply_to=instruction)

    def _refuse(
        self,
        context: grpc.ServicerContext,
        task_id: str,
        status: grpc.StatusCode,
        code: int,
        message: str,
    ) -> NoReturn:
        LOG.warning("refused an upload for task %s: %s", task_id[:12], message)
        self.grid.refused_upload(task_id)
        abort(context, status, code, message)

    def _expire_challenges(self) -> None:
        now = time.time()
        for key in [k for k, c in self._challenges.items() if c.expires < now]:
            del self._challenges[key]
        while len(self._challenges) > MAX_CHALLENGES:
            del self._challenges[next(iter(self._challenges))]
