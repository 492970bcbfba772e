"""What the edge grid holds while tasks are out: each device's task stream, each open
round's tally, each pending task, and the error codes of replies that will never come."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message

from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.rounds import EdgeRoundStats, RunEnd

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
    send: Callable[[StreamItem], None]
    """Queue an item on the stream; callable from any thread."""


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
