"""The gRPC servicer of ``stamen.edge.v1.EdgeService``: join, tasks, uploads, heartbeats.

Every refusal ends the call with a gRPC status plus a typed ``EdgeError`` in the
trailers (:func:`stamen.contract.edge.abort`), and none of them touches a
round: an unregistered device never becomes a node, and a refused upload never
reaches the strategy.

``Join`` is rate-limited (:mod:`stamen.server.edge.limits`) and its challenges
are bounded (:mod:`stamen.server.edge.sessions`). Sessions expire after
``session_ttl`` seconds; a device renews its session by joining again, and the
renewed session keeps its task stream and pending tasks. Every upload must
carry the device key's signature over its task, round and content hash, so a
session token alone cannot upload.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import NoReturn

import grpc

from stamen.contract.edge import (
    PROTOCOL_VERSION,
    abort,
    challenge_message,
    device_id,
    node_id_of,
    upload_signing_bytes,
    verify_signature,
)
from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc
from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.limits import JoinLimiter, JoinLimits, RateLimited, peer_address
from stamen.server.edge.registry import DeviceRegistry, DeviceStatus
from stamen.server.edge.sessions import ChallengeBook, Session, SessionTable
from stamen.server.edge.uploads import UploadRefused, receive, reply_message

LOG = logging.getLogger("stamen.server.edge")

E = edge_pb2
CHALLENGE_SECONDS = 30.0
STALE_HEARTBEATS = 6
"""A task stream closes after this many heartbeat periods without one."""
RENEWAL_GRACE_HEARTBEATS = 2
"""A task stream outlives its expired session by this many heartbeat periods, so that
the device's next heartbeat (told "expired") renews it without a gap."""
DEFAULT_SESSION_TTL = 3600.0


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """Serves devices for one :class:`EdgeGrid`.

    Args:
        grid: the grid the ServerApp drives.
        registry: the public keys allowed to join.
        max_payload_bytes: larger uploads are refused before they are read.
        heartbeat_seconds: how often devices should send a heartbeat.
        chunk_bytes: the upload chunk size devices should use.
        session_ttl: seconds a session lasts before the device must authenticate again.
        join_limits: the Join rate limits and challenge bounds.
    """

    def __init__(
        self,
        grid: EdgeGrid,
        registry: DeviceRegistry,
        *,
        max_payload_bytes: int,
        heartbeat_seconds: float = 5.0,
        chunk_bytes: int = 256 * 1024,
        session_ttl: float = DEFAULT_SESSION_TTL,
        join_limits: JoinLimits | None = None,
    ) -> None:
        self.grid = grid
        self.registry = registry
        self.max_payload_bytes = max_payload_bytes
        self.heartbeat_seconds = heartbeat_seconds
        self.chunk_bytes = chunk_bytes
        self.session_ttl = session_ttl
        limits = join_limits or JoinLimits()
        self._lock = threading.Lock()
        self._limiter = JoinLimiter(limits)
        self._challenges = ChallengeBook(
            lifetime=CHALLENGE_SECONDS,
            per_device_address=limits.challenges_per_device_address,
            per_device=limits.challenges_per_device,
            total=limits.challenges_total,
        )
        self._sessions = SessionTable(session_ttl)
        self.refused_joins = 0
        """Join calls refused by a rate limit or a challenge bound."""
        self.renewed_sessions = 0
        """Expired (or expiring) sessions their devices renewed in place."""

    # -- identity ---------------------------------------------------------------------

    def Join(
        self, request: edge_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> edge_pb2.JoinChallenge:
        """Check the device's key against the registry and hand it a nonce to sign."""
        address = peer_address(context.peer())
        key = bytes(request.public_key)
        status = (
            self.registry.status(key)
            if len(key) == 32 and request.device_id == device_id(key)
            else DeviceStatus.UNKNOWN
        )
        try:
            with self._lock:
                if status is DeviceStatus.REGISTERED:
                    self._limiter.admit_registered(request.device_id, address)
                else:
                    self._limiter.admit_refused(address)
        except RateLimited as limited:
            self._rate_limited(context, limited)
        if request.protocol_version != PROTOCOL_VERSION:
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_BAD_REQUEST,
                f"protocol version {request.protocol_version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
            )
        if len(key) != 32 or request.device_id != device_id(key):
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_BAD_REQUEST,
                "device_id must be the SHA-256 of a 32-byte Ed25519 public key",
            )
        self._check_registered(key, request.device_id, context, status)
        try:
            with self._lock:
                challenge = self._challenges.issue(request.device_id, key, address)
        except RateLimited as limited:
            self._rate_limited(context, limited)
        return edge_pb2.JoinChallenge(
            challenge_id=challenge.challenge_id,
            nonce=challenge.nonce,
            expires_unix=challenge.expires,
        )

    def Authenticate(
        self, request: edge_pb2.AuthenticateRequest, context: grpc.ServicerContext
    ) -> edge_pb2.Session:
        """Verify the signed nonce and open a session (or renew the one ``renews`` names)."""
        with self._lock:
            challenge = self._challenges.take(request.challenge_id)
        if challenge is None:
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
        with self._lock:
            # A device holds one session: a fresh one ends the older one, a renewal
            # (renews = the device's own token) carries it on under a new token.
            session, renewed = self._sessions.open(
                node_id_of(challenge.public_key),
                challenge.device_id,
                challenge.public_key,
                renews=request.renews,
            )
            self.renewed_sessions += renewed
        if renewed:
            LOG.info("node %d renewed its session", session.node_id)
        return edge_pb2.Session(
            token=session.token,
            node_id=session.node_id,
            heartbeat_seconds=self.heartbeat_seconds,
            max_payload_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
            expires_unix=session.expires,
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
                    if not self._still_welcome(session, context):
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
        signed = upload_signing_bytes(
            header.task_id, instruction.metadata.group_id, bytes(header.sha256), header.is_error
        )
        if not verify_signature(session.public_key, bytes(header.signature), signed):
            self._refuse(
                context,
                header.task_id,
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SIGNATURE,
                f"the upload's signature does not verify with device {session.device_id[:12]}'s "
                "key: every upload must be signed by the device that joined, so a session "
                "token alone cannot upload",
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
        try:
            data = receive(first, request_iterator, header)
            reply = reply_message(data, header, instruction)
        except UploadRefused as refused:
            self._refuse(context, header.task_id, refused.status, refused.code, str(refused))
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

    def session_of(self, node_id: int) -> Session | None:
        """The session a device holds now (expired or not), for operators and tests."""
        with self._lock:
            return self._sessions.for_node(node_id)

    # -- helpers --------------------------------------------------------------------

    def _still_welcome(self, session: Session, context: grpc.ServicerContext) -> bool:
        """False once the device is revoked, joined afresh, or stopped its heartbeats;
        the stream ends with ``SESSION_EXPIRED`` once its session expired and was not
        renewed in the grace period."""
        if self.registry.status(session.public_key) is not DeviceStatus.REGISTERED:
            return False
        now = time.time()
        with self._lock:
            current = self._sessions.is_current(session)
            lapsed = now - session.expires
        if current and lapsed > RENEWAL_GRACE_HEARTBEATS * self.heartbeat_seconds:
            LOG.info("node %d did not renew its expired session; closing it", session.node_id)
            self._expired(context)
        silent = now - session.last_seen > STALE_HEARTBEATS * self.heartbeat_seconds
        if silent:
            LOG.warning("node %d sent no heartbeat for a while; closing it", session.node_id)
        return current and not silent

    def _check_registered(
        self,
        key: bytes,
        ident: str,
        context: grpc.ServicerContext,
        status: DeviceStatus | None = None,
    ) -> None:
        status = self.registry.status(key) if status is None else status
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

    def _session(self, token: str, context: grpc.ServicerContext) -> Session:
        with self._lock:
            session = self._sessions.lookup(token)
        if session is None:
            abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SESSION,
                "unknown session (the server restarted, or the device joined again since); "
                "join again",
            )
        if self.registry.status(session.public_key) is not DeviceStatus.REGISTERED:
            with self._lock:
                self._sessions.drop(session)
            self._check_registered(session.public_key, session.device_id, context)
        if session.expired(time.time()):
            self._expired(context)
        return session

    def _expired(self, context: grpc.ServicerContext) -> NoReturn:
        abort(
            context,
            grpc.StatusCode.UNAUTHENTICATED,
            E.ERROR_CODE_SESSION_EXPIRED,
            f"the session expired (sessions last {self.session_ttl:g} s); join again "
            "with renews set to this token to renew it, then repeat the call",
        )

    def _rate_limited(self, context: grpc.ServicerContext, limited: RateLimited) -> NoReturn:
        with self._lock:
            self.refused_joins += 1
        abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            E.ERROR_CODE_RATE_LIMITED,
            str(limited),
            retry_after=limited.retry_after,
        )

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
