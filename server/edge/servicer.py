"""The asynchronous servicer of ``stamen.edge.v1.EdgeService``: join, tasks, uploads, heartbeats.

It runs on the edge server's event loop (``grpc.aio``): a connected device
costs a suspended task-stream coroutine and a queue, not a thread, and every
piece of state here is touched only from that loop. The grid it feeds is
synchronous (the ServerApp's thread drives it); tasks cross over through each
stream's thread-safe ``send``.

Every refusal ends the call with a gRPC status plus a typed ``EdgeError`` in the
trailers (:class:`~stamen.server.edge.refusal.Refusal`), and none of them touches a
round: an unregistered device never becomes a node, and a refused upload never
reaches the strategy.

``Join`` is rate-limited (:mod:`stamen.server.edge.limits`) and its challenges
are bounded (:mod:`stamen.server.edge.sessions`). Sessions expire after
``session_ttl`` seconds; a device renews its session by joining again, and the
renewed session keeps its task stream and pending tasks. Every upload must
carry the device key's signature over its task, round and content hash, so a
session token alone cannot upload.

Who is connected and still there is the :class:`~stamen.server.edge.roster.Roster`'s
business: one periodic sweep (:meth:`EdgeServicer.sweep`) releases the devices
that went silent and cuts off those the registry revoked, and heartbeat periods
grow with the fleet (each device is told its period in every reply).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from stamen.contract.edge import (
    PROTOCOL_VERSION,
    challenge_message,
    device_id,
    node_id_of,
    upload_signing_bytes,
    verify_signature,
)
from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc
from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.limits import JoinLimiter, JoinLimits, RateLimited, peer_address
from stamen.server.edge.refusal import Refusal, refused_device, refusing
from stamen.server.edge.registry import DeviceRegistry, DeviceStatus
from stamen.server.edge.roster import Roster
from stamen.server.edge.rounds import RunEnd
from stamen.server.edge.sessions import ChallengeBook, Session, SessionTable
from stamen.server.edge.uploads import (
    UploadRefused,
    first_chunk,
    no_more_chunks,
    receive,
    reply_message,
)

LOG = logging.getLogger("stamen.server.edge")

E = edge_pb2
Context = Any
"""``grpc.aio.ServicerContext`` (generic in its messages)."""
CHALLENGE_SECONDS = 30.0
DEFAULT_SESSION_TTL = 3600.0
DEFAULT_MAX_HEARTBEATS_PER_SECOND = 200.0


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """Serves devices for one :class:`EdgeGrid`, on one event loop.

    Args:
        grid: the grid the ServerApp drives.
        registry: the public keys allowed to join.
        max_payload_bytes: larger uploads are refused before they are read.
        heartbeat_seconds: the shortest heartbeat period devices are told.
        chunk_bytes: the upload chunk size devices should use.
        session_ttl: seconds a session lasts before the device must authenticate again.
        join_limits: the Join rate limits and challenge bounds.
        max_heartbeats_per_second: heartbeat periods grow with the fleet to stay below this.
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
        max_heartbeats_per_second: float = DEFAULT_MAX_HEARTBEATS_PER_SECOND,
    ) -> None:
        self.grid = grid
        self.registry = registry
        self.max_payload_bytes = max_payload_bytes
        self.chunk_bytes = chunk_bytes
        self.session_ttl = session_ttl
        limits = join_limits or JoinLimits()
        self._limiter = JoinLimiter(limits)
        self._challenges = ChallengeBook(
            lifetime=CHALLENGE_SECONDS,
            per_device_address=limits.challenges_per_device_address,
            per_device=limits.challenges_per_device,
            total=limits.challenges_total,
        )
        self._sessions = SessionTable(session_ttl)
        self.roster = Roster(
            grid,
            registry,
            heartbeat_seconds=heartbeat_seconds,
            max_heartbeats_per_second=max_heartbeats_per_second,
            expired=self._expired(),
        )
        self.refused_joins = 0
        """Join calls refused by a rate limit or a challenge bound."""
        self.renewed_sessions = 0
        """Expired (or expiring) sessions their devices renewed in place."""

    # -- identity ---------------------------------------------------------------------

    @refusing
    async def Join(self, request: edge_pb2.JoinRequest, context: Context) -> edge_pb2.JoinChallenge:
        """Check the device's key against the registry and hand it a nonce to sign."""
        address = peer_address(context.peer())
        key = bytes(request.public_key)
        status = (
            self.registry.status(key)
            if len(key) == 32 and request.device_id == device_id(key)
            else DeviceStatus.UNKNOWN
        )
        try:
            if status is DeviceStatus.REGISTERED:
                self._limiter.admit_registered(request.device_id, address)
            else:
                self._limiter.admit_refused(address)
        except RateLimited as limited:
            raise self._rate_limited(limited) from None
        if request.protocol_version != PROTOCOL_VERSION:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_BAD_REQUEST,
                f"protocol version {request.protocol_version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
            )
        if len(key) != 32 or request.device_id != device_id(key):
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_BAD_REQUEST,
                "device_id must be the SHA-256 of a 32-byte Ed25519 public key",
            )
        self._check_registered(key, request.device_id, status)
        try:
            challenge = self._challenges.issue(request.device_id, key, address)
        except RateLimited as limited:
            raise self._rate_limited(limited) from None
        return edge_pb2.JoinChallenge(
            challenge_id=challenge.challenge_id,
            nonce=challenge.nonce,
            expires_unix=challenge.expires,
        )

    @refusing
    async def Authenticate(
        self, request: edge_pb2.AuthenticateRequest, context: Context
    ) -> edge_pb2.Session:
        """Verify the signed nonce and open a session (or renew the one ``renews`` names)."""
        challenge = self._challenges.take(request.challenge_id)
        if challenge is None:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SIGNATURE,
                "the challenge is unknown or expired; join again",
            )
        message = challenge_message(challenge.nonce, challenge.device_id)
        if request.device_id != challenge.device_id or not verify_signature(
            challenge.public_key, bytes(request.signature), message
        ):
            LOG.warning("device %s failed the join challenge", challenge.device_id[:12])
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SIGNATURE,
                "the challenge signature does not verify with the device's key",
            )
        self._check_registered(challenge.public_key, challenge.device_id)
        # A device holds one session: a fresh one ends the older one, a renewal
        # (renews = the device's own token) carries it on under a new token.
        session, renewed = self._sessions.open(
            node_id_of(challenge.public_key),
            challenge.device_id,
            challenge.public_key,
            renews=request.renews,
        )
        self.renewed_sessions += renewed
        session.heartbeat_seconds = self.roster.heartbeat_period()
        if not renewed:
            self.roster.rejoined(session)
        if renewed:
            LOG.info("node %d renewed its session", session.node_id)
        return edge_pb2.Session(
            token=session.token,
            node_id=session.node_id,
            heartbeat_seconds=session.heartbeat_seconds,
            max_payload_bytes=self.max_payload_bytes,
            chunk_bytes=self.chunk_bytes,
            expires_unix=session.expires,
        )

    # -- tasks --------------------------------------------------------------------------

    @refusing
    async def Tasks(
        self, request: edge_pb2.TaskStreamRequest, context: Context
    ) -> AsyncIterator[edge_pb2.Task]:
        """Stream tasks to the device for as long as it stays connected and welcome."""
        session = self._session(request.session)
        node = session.node_id
        ended = self.grid.run_end
        if ended is not None:
            yield self.grid.run_ended_task(ended, node, request.session)
            return
        stream = self.roster.attach(session)
        try:
            while True:
                item = await stream.inbox.get()
                if item is None:
                    return
                if isinstance(item, Refusal):
                    raise item
                if isinstance(item, RunEnd):
                    yield self.grid.run_ended_task(item, node, request.session)
                    return
                yield item
        finally:
            self.roster.detach(stream)

    @refusing
    async def Upload(
        self, request_iterator: AsyncIterator[edge_pb2.UploadChunk], context: Context
    ) -> edge_pb2.UploadAck:
        """Receive one reply in chunks, check it whole, and hand it to the grid."""
        return await self._upload(await first_chunk(request_iterator), request_iterator)

    @refusing
    async def UploadWhole(
        self, request: edge_pb2.UploadChunk, context: Context
    ) -> edge_pb2.UploadAck:
        """Receive one reply that fits in one chunk; the same checks as :meth:`Upload`."""
        return await self._upload(request, no_more_chunks())

    async def _upload(
        self, first: edge_pb2.UploadChunk | None, rest: AsyncIterator[edge_pb2.UploadChunk]
    ) -> edge_pb2.UploadAck:
        if first is None or not first.HasField("header"):
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                E.ERROR_CODE_BAD_REQUEST,
                "an upload starts with a chunk that carries its header",
            )
        header = first.header
        session = self._session(header.session)
        instruction = self.grid.instruction(header.task_id, session.node_id)
        if instruction is None:
            self.grid.note_late(header.task_id, session.node_id)
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_LATE,
                f"task {header.task_id[:12]} is not open for this device (its round is over)",
            )
        signed = upload_signing_bytes(
            header.task_id, instruction.metadata.group_id, bytes(header.sha256), header.is_error
        )
        try:
            if not verify_signature(session.public_key, bytes(header.signature), signed):
                raise UploadRefused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    E.ERROR_CODE_BAD_SIGNATURE,
                    f"the upload's signature does not verify with device "
                    f"{session.device_id[:12]}'s key: every upload must be signed by the "
                    "device that joined, so a session token alone cannot upload",
                )
            if header.total_bytes > self.max_payload_bytes:
                raise UploadRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    E.ERROR_CODE_PAYLOAD_TOO_LARGE,
                    f"upload of {header.total_bytes} bytes exceeds the server's limit of "
                    f"{self.max_payload_bytes} bytes",
                )
            data = await receive(first, rest, header)
            reply = reply_message(data, header, instruction)
        except UploadRefused as refused:
            LOG.warning("refused an upload for task %s: %s", header.task_id[:12], refused)
            self.grid.refused_upload(header.task_id)
            raise
        if not self.grid.deliver(header.task_id, reply):
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                E.ERROR_CODE_LATE,
                "the round ended before this upload completed; it was dropped",
            )
        session.last_seen = time.time()
        return edge_pb2.UploadAck(task_id=header.task_id, received_bytes=len(data))

    @refusing
    async def Heartbeat(
        self, request: edge_pb2.HeartbeatRequest, context: Context
    ) -> edge_pb2.HeartbeatReply:
        """Note that the device is alive; tell it when to send the next heartbeat."""
        session = self._session(request.session)
        session.last_seen = time.time()
        session.heartbeat_seconds = self.roster.heartbeat_period()
        return edge_pb2.HeartbeatReply(
            server_unix=session.last_seen, heartbeat_seconds=session.heartbeat_seconds
        )

    def sweep(self) -> None:
        """Cut off revoked devices, and release the ones whose presence has lapsed."""
        self.roster.sweep(self._sessions.sessions())

    # -- helpers --------------------------------------------------------------------

    def session_of(self, node_id: int) -> Session | None:
        """The session a device holds now (expired or not), for operators and tests."""
        return self._sessions.for_node(node_id)

    def _check_registered(self, key: bytes, ident: str, status: DeviceStatus | None = None) -> None:
        status = self.registry.status(key) if status is None else status
        if status is DeviceStatus.REGISTERED:
            return
        LOG.warning("refused %s device %s", status.value, ident[:12])
        raise refused_device(ident, status)

    def _session(self, token: str) -> Session:
        session = self._sessions.lookup(token)
        if session is None:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                E.ERROR_CODE_BAD_SESSION,
                "unknown session (the server restarted, or the device joined again since); "
                "join again",
            )
        status = self.registry.status(session.public_key)
        if status is not DeviceStatus.REGISTERED:
            self.roster.cut_off(session, status)
            raise refused_device(session.device_id, status)
        if session.expired(time.time()):
            raise self._expired()
        return session

    def _expired(self) -> Refusal:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            E.ERROR_CODE_SESSION_EXPIRED,
            f"the session expired (sessions last {self.session_ttl:g} s); join again "
            "with renews set to this token to renew it, then repeat the call",
        )

    def _rate_limited(self, limited: RateLimited) -> Refusal:
        self.refused_joins += 1
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            E.ERROR_CODE_RATE_LIMITED,
            str(limited),
            retry_after=limited.retry_after,
        )
