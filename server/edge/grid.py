"""``EdgeGrid``: Flower's ``Grid`` over real devices connected with the edge protocol.

The ServerApp and its strategy see an ordinary Grid, synchronous, in their
own thread: node ids, messages out, replies in. Behind it, each message
becomes a signed :class:`Task` handed to the device's task stream through the
stream's ``send`` (thread-safe: the edge server's event loop writes it out),
and each reply arrives as a chunked upload (see
:mod:`stamen.server.edge.servicer`). The grid's state sits behind one lock,
taken briefly from both sides.

A round closes by the strategy's :class:`~stamen.core.fleet.RoundPolicy`, as on
the simulation grid, but on the real clock: ``send_and_receive`` returns when
every task is resolved (answered, or its device dropped out), when ``quorum``
devices have sent a good reply (over-selection: the strategy sampled more),
or at the ``deadline`` (seconds after dispatch; the strategy's ``timeout``
bounds it too), whichever is first. It counts stragglers, dropouts and
surplus as the simulation grid does (:class:`EdgeRoundStats`). A device that
vanishes or is revoked mid-round is released at once (:meth:`EdgeGrid.release`),
so its round does not wait for its deadline.

``push_messages``/``pull_messages`` are the asynchronous side (FedBuff): a
pull returns the replies in so far (nothing, while every device still works),
and a reply for each task that will get none: its device dropped out, or the
deadline passed (the task expired). So no task holds a device's slot forever.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Error, Message

from stamen.core.grid import RoundPolicyGrid, assign_message_id
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.rounds import EdgeRoundStats, RunEnd
from stamen.server.edge.sealing import TaskSealer, seal_run_end
from stamen.server.edge.tasks_in_flight import (
    DEVICE_LOST,
    TASK_EXPIRED,
    ClosedTasks,
    NodeLink,
    OpenRound,
    PendingTask,
    StreamItem,
    send_all,
)

LOG = logging.getLogger("stamen.server.edge")

RUN_END_WAVE = 1_000
"""Streams told at once that the run has ended (see :meth:`EdgeGrid.end_run`)."""


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
        self._sealer = TaskSealer(signing_key)
        self._on_round = on_round
        self._started = time.monotonic()
        self._cond = threading.Condition()
        self._links: dict[int, NodeLink] = {}
        self._pending: dict[str, PendingTask] = {}
        self._by_node: dict[int, set[str]] = {}
        self._replies: dict[str, Message] = {}
        self._expiries: list[tuple[float, str]] = []
        """(deadline, task id) of pushed tasks, soonest first."""
        self._closed = ClosedTasks()
        self._closing = False
        self.run_end: RunEnd | None = None
        """Set once the run has ended; every stream, open or opened later, is told."""
        self.history: list[EdgeRoundStats] = []

    @property
    def now(self) -> float:
        """Seconds since this grid started (the real clock)."""
        return time.monotonic() - self._started

    # -- Grid API -----------------------------------------------------------------

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the devices whose task stream is open now."""
        with self._cond:
            return list(self._links)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Send each message to its device as a signed task; returns message ids.

        Each task expires at the round policy's deadline: a pull then answers it
        with an error reply, as it does at once for a device that is not connected.
        """
        batch = list(messages)
        seconds = self.round_policy.deadline
        deadline = time.time() + seconds if seconds else 0.0
        ids = self._push(batch, deadline, None)
        if deadline:
            with self._cond:
                for task_id in ids:
                    if task_id in self._pending:
                        heapq.heappush(self._expiries, (deadline, task_id))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies in so far for ``message_ids`` (each returned once): the devices'
        own, and an error reply for each task whose device is gone or whose deadline
        passed. An empty list means no reply yet."""
        with self._cond:
            self._expire_pushed(time.time())
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
        round_ = OpenRound(self._new_stats(batch), size=len(batch), quorum=quorum)
        round_.stats.over_selected = len(batch) - quorum
        ids = self._push(batch, deadline, round_)
        round_.stats.dispatch_seconds = time.monotonic() - started
        with self._cond:
            # Woken only when the round may close (see deliver and release), or each second.
            while not self._closing and not round_.done:
                remaining = deadline - time.time() if deadline else 1.0
                if remaining <= 0:
                    break
                self._cond.wait(timeout=min(remaining, 1.0))
            expired = bool(deadline) and time.time() >= deadline
            replies = self._collect(ids, quorum, round_.stats, expired=expired)
        stats = round_.stats
        stats.seconds = time.monotonic() - started
        stats.close()
        self.record_timing(stats.message_type, stats.timing(self.now))
        self._report(stats)
        return replies

    # -- called by the servicer (on the event loop) ------------------------------------

    def connect(
        self,
        node_id: int,
        device_id: str,
        put: Callable[[StreamItem], None],
        post: Callable[..., object],
    ) -> NodeLink:
        """Open a device's task stream (see :class:`NodeLink` for ``put`` and ``post``),
        closing an older stream of the same device."""
        link = NodeLink(node_id, device_id, put, post)
        with self._cond:
            old = self._links.get(node_id)
            self._links[node_id] = link
            self._cond.notify_all()
        if old is not None:
            old.send(None)
        LOG.info("device %s connected as node %d", device_id[:12], node_id)
        return link

    def disconnect(self, link: NodeLink) -> None:
        """Forget a closed task stream. Its pending tasks still wait for their reply: a
        device whose stream broke while it trains may still upload, until it is
        :meth:`release`\\ d as gone."""
        with self._cond:
            if self._links.get(link.node_id) is link:
                del self._links[link.node_id]
        LOG.info("node %d disconnected", link.node_id)

    def release(self, node_id: int, kind: str, reason: str) -> int:
        """Give up on ``node_id``'s pending tasks: it ``kind`` (``vanished``, ``revoked``).

        Each task's round counts a dropout and stops waiting for it; a pushed task
        gets an error reply for the next pull. Returns how many tasks were released.
        """
        with self._cond:
            task_ids = self._by_node.pop(node_id, set())
            for task_id in task_ids:
                pending = self._pending.pop(task_id)
                round_ = pending.round
                if round_ is None:
                    self._replies[task_id] = Message(
                        Error(code=DEVICE_LOST, reason=reason), reply_to=pending.message
                    )
                    self._closed.remember(task_id, None)
                    continue
                round_.lost += 1
                setattr(round_.stats, kind, getattr(round_.stats, kind) + 1)
                round_.stats.dropout_nodes.append(node_id)
                self._closed.remember(task_id, round_.stats)
            if task_ids:
                self._cond.notify_all()  # a round may close, a pull has replies
        if task_ids:
            LOG.warning("node %d %s: %d task(s) released: %s", node_id, kind, len(task_ids), reason)
        return len(task_ids)

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
                self._closed.count_late(task_id, reply.metadata.src_node_id)
                return False
            self._unbind(task_id, pending.node_id)
            self._replies[task_id] = reply
            round_ = pending.round
            if round_ is None:
                return True
            round_.stats.replies += 1
            round_.answered += 1
            round_.good += not reply.has_error()
            if round_.done:
                self._cond.notify_all()
        return True

    def note_late(self, task_id: str, node_id: int) -> None:
        """Count an upload for a task whose round is over."""
        with self._cond:
            self._closed.count_late(task_id, node_id)

    def refused_upload(self, task_id: str) -> None:
        """Count an upload refused as oversized, corrupt or unsigned against its round."""
        with self._cond:
            pending = self._pending.get(task_id)
            if pending is not None and pending.round is not None:
                stats: EdgeRoundStats | None = pending.round.stats
            else:
                stats = self._closed.round_of(task_id)
            if stats is not None:
                stats.refused_uploads += 1

    def end_run(self, end: RunEnd, *, within: float = 0.0) -> None:
        """Tell every connected device that the run has ended (devices that connect later
        are told as soon as they open their stream), and wake any waiting round.

        The notices go out in waves of :data:`RUN_END_WAVE` streams, each wave given
        until its streams close (``within`` seconds for all waves together): every
        notice in flight holds its connection's write buffers, and 10,000 at once
        added 140 MiB to the server's peak. Past ``within``, the rest go at once.
        """
        with self._cond:
            self.run_end = end
            self._closing = True
            links = list(self._links.values())
            self._cond.notify_all()
        limit = time.monotonic() + within
        for start in range(0, len(links), RUN_END_WAVE):
            wave = links[start : start + RUN_END_WAVE]
            send_all([(link, end) for link in wave])
            with self._cond:
                while time.monotonic() < limit and any(
                    self._links.get(link.node_id) is link for link in wave
                ):
                    self._cond.wait(timeout=0.05)

    def run_ended_task(self, end: RunEnd, node_id: int, session: str) -> edge_pb2.Task:
        """The signed notice of ``end`` for ``node_id``'s stream opened with ``session``."""
        return seal_run_end(self._signing_key, end, self._run.run_id, node_id, session)

    def close(self) -> None:
        """End every task stream and wake any waiting round."""
        with self._cond:
            self._closing = True
            links = list(self._links.values())
            self._cond.notify_all()
        send_all([(link, None) for link in links])

    # -- internals --------------------------------------------------------------------

    def _new_stats(self, batch: list[Message]) -> EdgeRoundStats:
        first = batch[0].metadata if batch else None
        return EdgeRoundStats(
            group_id=first.group_id if first else "",
            message_type=first.message_type if first else "",
        )

    def _push(self, batch: list[Message], deadline: float, round_: OpenRound | None) -> list[str]:
        """Seal every task outside the lock, then register and send them."""
        sealed = []
        for message in batch:
            task_id = assign_message_id(message)
            sealed.append((message, task_id, self._seal(message, task_id, deadline)))
        sends: list[tuple[NodeLink, StreamItem]] = []
        with self._cond:
            for message, task_id, task in sealed:
                node_id = message.metadata.dst_node_id
                link = self._links.get(node_id)
                if round_ is not None:
                    round_.stats.sent += 1
                if link is not None:
                    self._pending[task_id] = PendingTask(message, node_id, round_)
                    self._by_node.setdefault(node_id, set()).add(task_id)
                    sends.append((link, task))
                elif round_ is not None:
                    round_.lost += 1
                    round_.stats.not_connected += 1
                    round_.stats.dropout_nodes.append(node_id)
                    self._closed.remember(task_id, round_.stats)
                else:
                    self._replies[task_id] = Message(
                        Error(code=DEVICE_LOST, reason=f"node {node_id} is not connected"),
                        reply_to=message,
                    )
        send_all(sends)
        return [task_id for _, task_id, _ in sealed]

    def _seal(self, message: Message, task_id: str, deadline: float) -> edge_pb2.Task:
        """The signed task carrying ``message`` to its device (``deadline`` 0: none)."""
        return self._sealer.seal(message, task_id, self._run.run_id, deadline)

    def _expire_pushed(self, now: float) -> None:
        """Answer each pushed task past its deadline with an error reply (lock held)."""
        while self._expiries and self._expiries[0][0] <= now:
            _, task_id = heapq.heappop(self._expiries)
            pending = self._pending.pop(task_id, None)
            if pending is None:
                continue  # answered or released meanwhile
            self._unbind(task_id, pending.node_id)
            self._replies[task_id] = Message(
                Error(code=TASK_EXPIRED, reason="no reply before the task's deadline"),
                reply_to=pending.message,
            )
            self._closed.remember(task_id, None)

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
                if pending is None:
                    continue  # a dropout, counted when it was released
                self._unbind(mid, pending.node_id)
                if expired:
                    stats.timed_out += 1
                    stats.timed_out_nodes.append(pending.node_id)
                else:
                    stats.cancelled += 1
                self._closed.remember(mid, stats)
                continue
            if not reply.has_error():
                if successes >= quorum:
                    stats.surplus_dropped += 1
                    continue
                successes += 1
            replies.append(reply)
        stats.participants = len(replies)
        return replies

    def _unbind(self, task_id: str, node_id: int) -> None:
        tasks = self._by_node.get(node_id)
        if tasks is not None:
            tasks.discard(task_id)
            if not tasks:
                del self._by_node[node_id]

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
