"""What the edge grid holds while tasks are out: each device's task stream, each open
round's tally, each pending task, and the error codes of replies that will never come."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message

from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.rounds import EdgeRoundStats, RunEnd

LOG = logging.getLogger("stamen.server.edge")

CLOSED_TASKS_KEPT = 100_000
"""Closed tasks remembered, to count their late uploads against their round."""
DEVICE_LOST = 2
"""Error code of the reply a pull gets for a task whose device is gone (as in simulation)."""
TASK_EXPIRED = 3
"""Error code of the reply a pull gets for a task that passed its deadline unanswered."""

StreamItem = edge_pb2.Task | RunEnd | None
"""What goes down a task stream: a task, the end of the run, or ``None`` (close it)."""


@dataclass
class NodeLink:
    """A device's open task stream, as the grid holds it."""

    node_id: int
    device_id: str
    put: Callable[[StreamItem], None]
    """Queue an item on the stream; only on the event loop that serves the stream."""
    post: Callable[..., object]
    """Run a callable with its arguments on that event loop; callable from any thread
    (``loop.call_soon_threadsafe``)."""

    def send(self, item: StreamItem) -> None:
        """Queue an item on the stream; callable from any thread."""
        self.post(self.put, item)


def send_all(items: list[tuple[NodeLink, StreamItem]]) -> None:
    """Queue each item on its stream, from any thread, waking each event loop once:
    a round's thousand tasks are one hand-over to the loop, not a thousand."""
    by_loop: dict[Callable[..., object], list[tuple[NodeLink, StreamItem]]] = {}
    for link, item in items:
        by_loop.setdefault(link.post, []).append((link, item))
    for post, batch in by_loop.items():
        post(_put_each, batch)


def _put_each(items: list[tuple[NodeLink, StreamItem]]) -> None:
    for link, item in items:
        link.put(item)


@dataclass
class OpenRound:
    """A round in flight: its tasks and how many are resolved."""

    stats: EdgeRoundStats
    size: int
    quorum: int
    answered: int = 0
    good: int = 0
    """Replies that are not errors, of ``answered``."""
    lost: int = 0
    """Tasks that will get no reply: their device dropped out."""

    @property
    def done(self) -> bool:
        """Every task resolved, or the quorum of good replies in: the round may close."""
        return self.answered + self.lost >= self.size or self.good >= self.quorum


@dataclass
class PendingTask:
    """A task sent and not yet answered."""

    message: Message
    node_id: int
    round: OpenRound | None
    """``None``: pushed, for an asynchronous pull."""


class ClosedTasks:
    """The rounds of the newest :data:`CLOSED_TASKS_KEPT` closed tasks, so that a late
    upload is counted against its round (``None``: a pushed task, no round)."""

    def __init__(self) -> None:
        self._rounds: OrderedDict[str, EdgeRoundStats | None] = OrderedDict()

    def remember(self, task_id: str, stats: EdgeRoundStats | None) -> None:
        """Keep a closed task's round, forgetting the oldest past the bound."""
        self._rounds[task_id] = stats
        while len(self._rounds) > CLOSED_TASKS_KEPT:
            self._rounds.popitem(last=False)

    def round_of(self, task_id: str) -> EdgeRoundStats | None:
        """The round a closed task belonged to, if it is remembered and had one."""
        return self._rounds.get(task_id)

    def count_late(self, task_id: str, node_id: int) -> None:
        """Count an upload for a closed task against its round."""
        closed = self._rounds.get(task_id)
        if closed is not None:
            closed.late_dropped += 1
            LOG.warning("round %s: dropped a late reply from node %d", closed.group_id, node_id)
