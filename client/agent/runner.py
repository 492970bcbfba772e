"""The agent's main loop: stay connected, run each task through the ClientApp, upload.

The agent joins, opens its task stream and handles each task in turn: it
verifies the server's signature and the content hash, asks the resource guards,
runs the unchanged Stamen ``ClientApp`` on a Flower ``Message`` and ``Context``,
and uploads the reply in chunks, signed with the device key. When the server
goes away it reconnects with exponential backoff and jitter (at least as long
as a rate limit asks); when its session expires it renews it in place
(:mod:`stamen.client.agent.session`) and keeps its round; a refusal no retry
can fix ends it with :class:`AgentRefused`, a TLS handshake that keeps failing
the same way with :class:`TlsFailure`, and ``give_up_after`` seconds without a
server with :class:`AgentGaveUp` (their exit statuses: :mod:`stamen.client.agent.exits`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, Context, MessageType, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from stamen.client.agent.connection import Backoff, EdgeConnection, SessionInfo, is_fatal
from stamen.client.agent.connection import open_channel as _open_channel
from stamen.client.agent.exits import (
    AgentGaveUp,
    AgentRefused,
    AgentStopped,
    TlsFailure,
    does_not_fit,
    refusal_line,
)
from stamen.client.agent.guards import GuardSettings, skip_reason
from stamen.client.agent.run_end import is_run_end, run_end_line
from stamen.client.agent.session import SessionKeeper, is_expired
from stamen.client.agent.state import AgentState, AgentStateStore
from stamen.client.agent.tls_diagnosis import details_of, diagnose, last_error
from stamen.client.kept_model import kept_payload, restore_kept
from stamen.config import require
from stamen.contract import MODEL_KEY, PAYLOAD, RESIDUAL_KEY, payload_bytes
from stamen.contract.edge import (
    CorruptRecords,
    EdgeProtocolError,
    parse_records,
    serialize_records,
    sha256,
    task_signing_bytes,
    verify_signature,
)
from stamen.core.errors import ShapeMismatch
from stamen.protos.edge.v1 import edge_pb2

LOG = logging.getLogger("stamen.agent")

REFUSED_TASK = 10
"""Reply error code: the task's signature or hash did not verify."""
SKIPPED = 11
"""Reply error code: a resource guard skipped the round."""
CLIENT_APP_FAILED = 12
"""Reply error code: the ClientApp raised."""
DATA_DOES_NOT_FIT = 13
"""Reply error code: this device's data does not fit the server's model."""

TLS_ATTEMPTS = 3
"""Handshakes that fail the same TLS way in a row before the agent stops: a wrong CA
or a one-sided --insecure does not fix itself, but a server mid-restart gets a retry."""


@dataclass(frozen=True)
class AgentSettings:
    """How an agent connects and behaves."""

    server: str
    """host:port of the edge server."""
    state_dir: Path
    """Holds the device key and the persisted state."""
    ca_cert: Path | None
    """CA certificate to trust; None means plain text (--insecure)."""
    model_key: bytes
    """The server's raw Ed25519 model-signing public key."""
    node_config: dict[str, int | float | str | bool] = field(default_factory=dict)
    """Flower node config the ClientApp reads (``partition-id``, ``num-partitions``)."""
    guards: GuardSettings = field(default_factory=GuardSettings)
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    give_up_after: float | None = None
    """Stop (:class:`AgentGaveUp`) after this many seconds without a server; None retries
    forever."""
    max_tasks: int | None = None
    """Stop after handling this many tasks (tests, benchmarks)."""

    def __post_init__(self) -> None:
        host, sep, port = self.server.rpartition(":")
        require(bool(sep and host and port.isdigit()), "--server", "HOST:PORT", self.server)
        require(len(self.model_key) == 32, "model key", "a 32-byte Ed25519 key", "...")
        require(self.backoff_base > 0, "backoff base", "> 0", self.backoff_base)
        require(self.backoff_cap >= self.backoff_base, "backoff cap", ">= base", self.backoff_cap)


class Agent:
    """A device agent running ``app`` for one edge server."""

    def __init__(self, settings: AgentSettings, app: ClientApp, key: Ed25519PrivateKey) -> None:
        self.settings = settings
        self.app = app
        self.key = key
        self.store = AgentStateStore(settings.state_dir)
        self.state = self.store.load()
        self.context = Context(
            run_id=0,
            node_id=0,
            node_config=dict(settings.node_config),
            state=RecordDict(),
            run_config={},
        )
        self._set_residual(self.state.residual)
        restore_kept(self.context, self.state.model)
        self.handled = 0
        self.last_compute_seconds = 0.0
        self._renewed = 0
        self._keeper: SessionKeeper | None = None
        self._epoch = 0
        """Counts fresh joins; a renewed session keeps its epoch (it is the same server)."""
        self._trained_in: int | None = None
        """The epoch of the last training task (None: not this process)."""
        self.stop_event = threading.Event()
        self.run_ended: str | None = None
        """Why the server ended the run, once it said so (the agent then stops)."""
        self._verified_a_task = False
        self._stopping: AgentStopped | None = None
        """Set by a task this device can never handle: raised once its reply is uploaded."""
        self._backoff = Backoff(settings.backoff_base, settings.backoff_cap, random.Random())

    @property
    def renewals(self) -> int:
        """Sessions this agent renewed in place after the server said they expired."""
        keeper = self._keeper
        return self._renewed + (keeper.renewals if keeper is not None else 0)

    def run(self) -> None:
        """Serve until the run ends or the agent is stopped; raises :class:`AgentStopped`
        (refused, gave up, TLS) when it must stop for another reason."""
        offline_since: float | None = None
        tls_failures = 0
        last_failure = ""
        while not self.stop_event.is_set():
            connection = EdgeConnection(
                _open_channel(self.settings.server, self.settings.ca_cert), self.key
            )
            wait = 0.0
            try:
                session = connection.join()
                offline_since, tls_failures = None, 0
                self._backoff.reset()
                LOG.info("joined %s as node %d", self.settings.server, session.node_id)
                if self._serve(connection, session):
                    return
                continue  # the server closed the stream: join again at once
            except EdgeProtocolError as error:
                if is_fatal(error):
                    raise AgentRefused(refusal_line(error)) from None
                LOG.warning("server said %s: %s", error.code_name, error)
                wait = error.retry_after
                last_failure = error.code_name
            except grpc.RpcError as error:
                diagnosis = diagnose(error, self.settings.server, self.settings.ca_cert)
                tls_failures = tls_failures + 1 if diagnosis is not None else 0
                if diagnosis is not None and tls_failures >= TLS_ATTEMPTS:
                    raise TlsFailure(diagnosis.line) from None
                last_failure = diagnosis.cause if diagnosis else last_error(details_of(error))
                LOG.warning("server unreachable (%s); retrying", last_failure)
            finally:
                connection.close()
            offline_since = offline_since or time.monotonic()
            give_up = self.settings.give_up_after
            if give_up is not None and time.monotonic() - offline_since > give_up:
                raise AgentGaveUp(
                    f"no server at {self.settings.server} for {give_up:g} s "
                    f"(last: {last_failure}); giving up"
                )
            delay = max(self._backoff.next_delay(), wait)
            LOG.info("reconnecting in %.1f s", delay)
            self.stop_event.wait(delay)

    def _serve(self, connection: EdgeConnection, session: SessionInfo) -> bool:
        """Handle tasks until the stream ends; True when the agent should stop."""
        keeper = self._keeper = SessionKeeper(connection, session)
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(keeper, beating), daemon=True)
        beat.start()
        self._epoch += 1
        try:
            while True:
                opened = keeper.current
                try:
                    return self._stream(keeper, opened)
                except EdgeProtocolError as error:
                    if not is_expired(error):
                        raise
                    # The stream outlived its session's grace: renew, then reopen it.
                    keeper.renew(opened)
        finally:
            beating.set()
            self._renewed += keeper.renewals
            self._keeper = None

    def _stream(self, keeper: SessionKeeper, opened: SessionInfo) -> bool:
        """Handle the tasks of one task stream; True when the agent should stop."""
        for task in keeper.connection.tasks(opened):
            if is_run_end(task):
                if self._run_has_ended(task, opened):
                    return True
                continue
            data, is_error = self.handle(task, opened.node_id)
            if data is None:
                continue
            self._upload(keeper, task, data, is_error)
            self.handled += 1
            if self._stopping is not None:
                raise self._stopping  # the server has this device's reason; now stop
            if self.settings.max_tasks is not None and self.handled >= self.settings.max_tasks:
                return True
            if self.stop_event.is_set():
                return True
        return self.stop_event.is_set()

    def _run_has_ended(self, task: edge_pb2.Task, opened: SessionInfo) -> bool:
        """Stop for a genuine run-ended notice (say why in one line); ignore a forged one."""
        line = run_end_line(task, opened.node_id, opened.token, self.settings.model_key)
        if line is None:
            LOG.error("ignored a run-ended notice whose signature does not verify")
            return False
        self.run_ended = line
        LOG.info("%s; exiting", line)
        return True

    def handle(self, task: edge_pb2.Task, node_id: int) -> tuple[bytes | None, bool]:
        """Verify and run one task; returns (reply bytes or None for no reply, is_error)."""
        round_label = task.group_id or "?"
        intact = sha256(task.content) == bytes(task.content_sha256)
        if not intact or not verify_signature(
            self.settings.model_key, bytes(task.signature), task_signing_bytes(task, node_id)
        ):
            LOG.error(
                "round %s: refused the task: its model's signature or hash does not verify",
                round_label,
            )
            if intact and not self._verified_a_task:
                # Intact content under a signature that never once verified: this agent
                # holds another server's model-signing key, and every task will fail.
                self._stopping = AgentRefused(
                    "the server's models are not signed by this agent's model-signing key; "
                    "copy model-signing.pub from the server's certs folder into --certs"
                )
            return _error(REFUSED_TASK, "refused: the model's signature or hash does not verify")
        self._verified_a_task = True
        if task.deadline_unix and time.time() > task.deadline_unix:
            LOG.warning("round %s: the task arrived after its deadline; skipped", round_label)
            return None, False
        reason = skip_reason(self.settings.guards)
        if reason is not None:
            LOG.warning("round %s: skipping: %s", round_label, reason)
            return _error(SKIPPED, f"skipped: {reason}")
        try:
            content = parse_records(task.content)
        except CorruptRecords as error:
            return _error(REFUSED_TASK, f"refused: {error}")
        message = make_message(
            content=content,
            metadata=Metadata(
                run_id=int(task.run_id),
                message_id=task.task_id,
                src_node_id=SUPERLINK_NODE_ID,
                dst_node_id=node_id,
                reply_to_message_id="",
                group_id=task.group_id,
                created_at=time.time(),
                ttl=max(1.0, task.deadline_unix - time.time()) if task.deadline_unix else 3600.0,
                message_type=task.message_type,
            ),
        )
        LOG.info("round %s: %s", round_label, task.message_type)
        before = (
            self._rewind_a_lost_round(task, round_label)
            if task.message_type == MessageType.TRAIN
            else None
        )
        started = time.perf_counter()
        try:
            reply = self.app(message, self.context)
        except ShapeMismatch as error:  # the server's model: nothing this device can train
            reason = does_not_fit(error)
            LOG.error("round %s: %s", round_label, reason)
            self._stopping = AgentRefused(
                f"{reason}; start the agent with data of the server's dataset "
                "(the same features and classes)"
            )
            return _error(DATA_DOES_NOT_FIT, reason)
        except Exception as error:  # the device's failure is reported, the agent goes on
            LOG.error(
                "round %s: the ClientApp failed: %s: %s", round_label, type(error).__name__, error
            )
            LOG.debug("the ClientApp's traceback", exc_info=True)
            return _error(CLIENT_APP_FAILED, f"{type(error).__name__}: {error}")
        self.last_compute_seconds = time.perf_counter() - started
        LOG.info("round %s: done in %.2f s", round_label, self.last_compute_seconds)
        if before is not None:
            self._trained_in = self._epoch
            self.state.trained, self.state.residual_before = bytes(task.content_sha256), before
        self._persist(content, round_label)
        if reply.has_error():
            return _error(int(reply.error.code), str(reply.error.reason))
        return serialize_records(reply.content), False

    def _rewind_a_lost_round(self, task: edge_pb2.Task, round_label: str) -> dict[str, np.ndarray]:
        """The residual this training starts from; the one from before the last training
        when that same task comes again.

        A server killed before it checkpointed round r resumes by sending round r again,
        the same task to the byte, in a new session. The device's first try never counted,
        so it trains again from the residual it had then, and the run ends as an
        uninterrupted one would. The same task again within one session is new work
        (FedBuff hands one model version out more than once); a session renewed in place
        after it expired is still the same session.
        """
        if self.state.trained == bytes(task.content_sha256) and self._trained_in != self._epoch:
            LOG.warning("round %s: the server lost this round; training it again", round_label)
            self._set_residual(self.state.residual_before)
        return self._residual()

    def _residual(self) -> dict[str, np.ndarray]:
        record = self.context.state.array_records.get(RESIDUAL_KEY)
        return {name: record[name].numpy() for name in record} if record is not None else {}

    def _set_residual(self, residual: dict[str, np.ndarray]) -> None:
        if residual:
            self.context.state[RESIDUAL_KEY] = ArrayRecord(
                {name: Array(value) for name, value in residual.items()}
            )
        elif RESIDUAL_KEY in self.context.state:
            del self.context.state[RESIDUAL_KEY]

    def _persist(self, content: RecordDict, round_label: str) -> None:
        # The model the device keeps for the next delta; else the model as it was sent.
        model = kept_payload(self.context)
        sent = content.array_records.get(MODEL_KEY)
        if not model and sent is not None and PAYLOAD in sent:
            model = payload_bytes(sent[PAYLOAD])
        self.state = AgentState(
            round=int(round_label) if round_label.isdigit() else self.state.round,
            residual=self._residual(),
            model=model or self.state.model,
            trained=self.state.trained,
            residual_before=self.state.residual_before,
        )
        self.store.save(self.state)

    def _upload(
        self, keeper: SessionKeeper, task: edge_pb2.Task, data: bytes, is_error: bool
    ) -> None:
        try:
            # A session that expired while the device trained is renewed, and the
            # reply uploaded under the new one: the server kept the task open for it.
            keeper.call(
                lambda session: keeper.connection.upload(session, task, data, is_error=is_error)
            )
        except EdgeProtocolError as error:
            LOG.warning("round %s: upload refused: %s", task.group_id, error)
            if error.code == edge_pb2.ERROR_CODE_BAD_SESSION:
                raise
        except grpc.RpcError as error:
            # The task stream may still hold what came before the server went (the
            # run-ended notice): read it before reconnecting.
            LOG.warning(
                "round %s: upload failed (%s)", task.group_id, last_error(details_of(error))
            )

    def _heartbeats(self, keeper: SessionKeeper, done: threading.Event) -> None:
        period = keeper.current.heartbeat_seconds
        while not done.wait(period):
            try:
                # The server spaces heartbeats out as its fleet grows.
                period = keeper.call(keeper.connection.heartbeat) or period
            except (grpc.RpcError, EdgeProtocolError):
                return


def _error(code: int, reason: str) -> tuple[bytes, bool]:
    return edge_pb2.ReplyError(code=code, reason=reason).SerializeToString(), True
