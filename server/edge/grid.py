"""``EdgeGrid``: Flower's ``Grid`` over real devices connected with the edge protocol.

The ServerApp and its strategy see an ordinary Grid: node ids, messages out,
replies in. Behind it, each message becomes a signed :class:`Task` on the
device's task stream, and each reply arrives as a chunked upload (see
:mod:`stamen.server.edge.servicer`).

A round closes by the strategy's :class:`~stamen.core.fleet.RoundPolicy`, as on
the simulation grid, but on the real clock: ``send_and_receive`` returns when
every device has answered, when ``quorum`` devices have sent a good reply
(over-selection: the strategy sampled more), or at the ``deadline`` (seconds
after dispatch; the strategy's ``timeout`` bounds it too), whichever is first.
Replies that arrive after their round returned are refused and counted as
late; each round's counts go to the log and to ``on_round`` (see
:class:`EdgeRoundStats`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Error, Message

from stamen.contract.edge import serialize_records, sha256, task_signing_bytes
from stamen.core.fleet import RoundTiming
from stamen.core.grid import RoundPolicyGrid, assign_message_id
from stamen.protos.edge.v1 import edge_pb2

LOG = logging.getLogger("stamen.server.edge")

NOT_CONNECTED = 2
"""Error code of a reply the grid makes for a device that is not connected."""


@dataclass
class EdgeRoundStats:
    """What happened to one batch of messages (one round's training, usually)."""

    group_id: str
    message_type: str
    sent: int = 0
    over_selected: int = 0
    """Devices sent the task beyond the round policy's quorum."""
    not_connected: int = 0
    """Devices whose task stream was closed when the task was sent."""
    replies: int = 0
    timed_out: int = 0
    """Devices that had not replied when the deadline passed."""
    cancelled: int = 0
    """Devices still working when the quorum of good replies was in."""
    late_dropped: int = 0
    """Replies that arrived after the round returned, refused."""
    surplus_dropped: int = 0
    """Replies beyond the quorum that came in the same instant, dropped."""
    refused_uploads: int = 0
    """Uploads refused as oversized or corrupt."""
    seconds: float = 0.0
    timed_out_nodes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)

    def timing(self, clock: float) -> RoundTiming:
        """The round as every grid reports it (the round table, ``metrics.jsonl``); the
        edge outputs (``edge-rounds.jsonl``, ``summary.json``) count answers from it too."""
        return RoundTiming(
            dispatched=self.sent,
            participants=self.replies - self.surplus_dropped,
            stragglers=self.timed_out,
            dropouts=self.not_connected,
            surplus=self.cancelled + self.surplus_dropped,
            seconds=self.seconds,
            clock=clock,
        )


@dataclass
class _NodeChannel:
    node_id: int
    device_id: str
    tasks: queue.Queue[edge_pb2.Task | None] = field(default_factory=queue.Queue)
    busy: int = 0


@dataclass
class _Pending:
    message: Message
    node_id: int
    stats: EdgeRoundStats


class EdgeGrid(RoundPolicyGrid):
    """A Flower Grid whose nodes are devices connected to the edge server.

    It is a :class:`~stamen.core.fleet.PolicyGrid`: the strategy's round policy
    (``federation.deadline``, ``federation.over_selection``) closes each round.

    Args:
        signing_key: signs every task (and so every model) sent.
        on_round: called with each batch's stats once it returns.
    """

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        *,
        on_round: Callable[[EdgeRoundStats], None] | None = None,
    ) -> None:
        super().__init__()
        self._signing_key = signing_key
        self._on_round = on_round
        self._started = time.monotonic()
        self._cond = threading.Condition()
        self._nodes: dict[int, _NodeChannel] = {}
        self._pending: dict[str, _Pending] = {}
        self._replies: dict[str, Message] = {}
        self._closed: dict[str, EdgeRoundStats] = {}
        self._closing = False
        self.history: list[EdgeRoundStats] = []

    @property
    def now(self) -> float:
        """Seconds since this grid started (the real clock)."""
        return time.monotonic() - self._started

    # -- Grid API -----------------------------------------------------------------

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the devices whose task stream is open now."""
        with self._cond:
            return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Send each message to its device as a signed task; returns message ids."""
        batch = list(messages)
        deadline = self.round_policy.deadline
        return self._push(
            batch, time.time() + deadline if deadline else 0.0, self._new_stats(batch)
        )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies received so far for ``message_ids`` (each returned once)."""
        with self._cond:
            return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send a round and wait for its replies, until the round policy closes it."""
        batch = list(messages)
        if not batch:
            return []
        started = time.monotonic()
        limits = [t for t in (self.round_policy.deadline, timeout) if t is not None]
        deadline = time.time() + min(limits) if limits else 0.0
        quorum = min(self.round_policy.quorum or len(batch), len(batch))
        stats = self._new_stats(batch)
        stats.over_selected = len(batch) - quorum
        ids = self._push(batch, deadline, stats)
        with self._cond:
            while not self._closing:
                answered = [mid for mid in ids if mid in self._replies]
                successes = sum(not self._replies[mid].has_error() for mid in answered)
                remaining = deadline - time.time() if deadline else 1.0
                if len(answered) == len(ids) or successes >= quorum or remaining <= 0:
                    break
                self._cond.wait(timeout=min(remaining, 1.0))
            expired = bool(deadline) and time.time() >= deadline
            replies = self._collect(ids, quorum, stats, expired=expired)
        stats.seconds = time.monotonic() - started
        self.record_timing(stats.message_type, stats.timing(self.now))
        self._report(stats)
        return replies

    # -- called by the servicer -----------------------------------------------------

    def connect(self, node_id: int, device_id: str) -> _NodeChannel:
        """Open a device's task stream, closing an older stream of the same device."""
        with self._cond:
            old = self._nodes.get(node_id)
            if old is not None:
                old.tasks.put(None)
            channel = _NodeChannel(node_id, device_id)
            self._nodes[node_id] = channel
            self._cond.notify_all()
        LOG.info("device %s connected as node %d", device_id[:12], node_id)
        return channel

    def disconnect(self, channel: _NodeChannel) -> None:
        """Forget a closed task stream (its pending tasks still count until their round closes)."""
        with self._cond:
            if self._nodes.get(channel.node_id) is channel:
                del self._nodes[channel.node_id]
        LOG.info("node %d disconnected", channel.node_id)

    def instruction(self, task_id: str, node_id: int) -> Message | None:
        """The message a pending task carries, if ``node_id`` may still answer it."""
        with self._cond:
            pending = self._pending.get(task_id)
            return pending.message if pending and pending.node_id == node_id else None

    def deliver(self, task_id: str, reply: Message) -> bool:
        """Accept a device's reply; False when its round is over (it is counted late)."""
        with self._cond:
            pending = self._pending.pop(task_id, None)
            if pending is None:
                self._count_late(task_id, reply.metadata.src_node_id)
                return False
            channel = self._nodes.get(pending.node_id)
            if channel is not None:
                channel.busy = max(0, channel.busy - 1)
            self._replies[task_id] = reply
            pending.stats.replies += 1
            self._cond.notify_all()
        return True

    def note_late(self, task_id: str, node_id: int) -> None:
        """Count an upload for a task whose round is over."""
        with self._cond:
            self._count_late(task_id, node_id)

    def _count_late(self, task_id: str, node_id: int) -> None:
        closed = self._closed.get(task_id)
        if closed is not None:
            closed.late_dropped += 1
            LOG.warning("round %s: dropped a late reply from node %d", closed.group_id, node_id)

    def refused_upload(self, task_id: str) -> None:
        """Count an upload refused as oversized or corrupt against its round."""
        with self._cond:
            pending = self._pending.get(task_id)
            stats = pending.stats if pending else self._closed.get(task_id)
            if stats is not None:
                stats.refused_uploads += 1

    def close(self) -> None:
        """End every task stream and wake any waiting round."""
        with self._cond:
            self._closing = True
            for channel in self._nodes.values():
                channel.tasks.put(None)
            self._cond.notify_all()

    # -- internals --------------------------------------------------------------------

    def _new_stats(self, batch: list[Message]) -> EdgeRoundStats:
        first = batch[0].metadata if batch else None
        return EdgeRoundStats(
            group_id=first.group_id if first else "",
            message_type=first.message_type if first else "",
        )

    def _push(self, batch: list[Message], deadline: float, stats: EdgeRoundStats) -> list[str]:
        ids: list[str] = []
        for message in batch:
            task_id = assign_message_id(message)
            node_id = message.metadata.dst_node_id
            task = self._seal(message, task_id, deadline)
            with self._cond:
                channel = self._nodes.get(node_id)
                stats.sent += 1
                if channel is None:
                    stats.not_connected += 1
                    self._replies[task_id] = Message(
                        Error(code=NOT_CONNECTED, reason=f"node {node_id} is not connected"),
                        reply_to=message,
                    )
                else:
                    self._pending[task_id] = _Pending(message, node_id, stats)
                    channel.busy += 1
                    channel.tasks.put(task)
            ids.append(task_id)
        return ids

    def _seal(self, message: Message, task_id: str, deadline: float) -> edge_pb2.Task:
        """The signed task carrying ``message`` to its device (``deadline`` 0: none)."""
        content = serialize_records(message.content)
        task = edge_pb2.Task(
            task_id=task_id,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
            run_id=self._run.run_id,
            content=content,
            content_sha256=sha256(content),
            deadline_unix=deadline,
        )
        task.signature = self._signing_key.sign(
            task_signing_bytes(task, message.metadata.dst_node_id)
        )
        return task

    def _collect(
        self, ids: list[str], quorum: int, stats: EdgeRoundStats, *, expired: bool
    ) -> list[Message]:
        """Take this round's replies and close the round (caller holds the lock)."""
        replies: list[Message] = []
        successes = 0
        for mid in ids:
            reply = self._replies.pop(mid, None)
            if reply is None:
                pending = self._pending.pop(mid, None)
                if pending is not None and expired:
                    stats.timed_out += 1
                    stats.timed_out_nodes.append(pending.node_id)
                elif pending is not None:
                    stats.cancelled += 1
                if pending is not None:
                    channel = self._nodes.get(pending.node_id)
                    if channel is not None:
                        channel.busy = max(0, channel.busy - 1)
                self._closed[mid] = stats
                continue
            if not reply.has_error():
                if successes >= quorum:
                    stats.surplus_dropped += 1
                    continue
                successes += 1
            replies.append(reply)
        if len(self._closed) > 100_000:  # bounded memory on very long runs
            for key in list(self._closed)[:50_000]:
                del self._closed[key]
        return replies

    def _report(self, stats: EdgeRoundStats) -> None:
        self.history.append(stats)
        if stats.timed_out:
            LOG.warning(
                "round %s: %d of %d devices missed the deadline (nodes %s)",
                stats.group_id,
                stats.timed_out,
                stats.sent,
                ", ".join(map(str, stats.timed_out_nodes[:10])),
            )
        if self._on_round is not None:
            self._on_round(stats)
