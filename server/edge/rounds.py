"""What the edge grid tells about its rounds and its run: each round's counts, and its end.

:class:`EdgeRoundStats` counts what happened to each task of a round in the
simulation grid's terms (:class:`~stamen.core.fleet.RoundTiming`): a task is
answered (``participants``), a straggler (``timed_out``: no reply at the
deadline), a dropout (its device was not connected, vanished or was revoked)
or surplus (``cancelled`` or ``surplus_dropped`` once the quorum was in).
``edge-rounds.jsonl`` holds :meth:`EdgeRoundStats.to_dict` and the server
prints :meth:`EdgeRoundStats.problems`, made from the same fields, so the two
agree.

:class:`RunEnd` is what every connected agent is told when the run ends.

Examples:
    >>> stats = EdgeRoundStats("3", "train", sent=2, participants=1, revoked=1)
    >>> stats.close()
    >>> stats.dropouts, stats.problems()
    (1, 'round 3: 1/2 answered · revoked 1')
    >>> RunEnd.of_summary({"rounds": 5}).message
    'finished 5 rounds'
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from stamen.core.fleet import RoundTiming
from stamen.protos.edge.v1 import edge_pb2

NOTED = (
    "timed_out",
    "not_connected",
    "vanished",
    "revoked",
    "cancelled",
    "surplus_dropped",
    "refused_uploads",
)
"""The counts a round's printed line names when they are not zero."""


@dataclass
class EdgeRoundStats:
    """What happened to one batch of messages (one round's training, usually)."""

    group_id: str
    message_type: str
    sent: int = 0
    over_selected: int = 0
    """Devices sent the task beyond the round policy's quorum."""
    participants: int = 0
    """Replies handed to the strategy (good updates and the devices' own error replies)."""
    replies: int = 0
    """Replies that arrived before the round closed (participants and surplus)."""
    timed_out: int = 0
    """Stragglers: devices that had not replied when the deadline passed."""
    not_connected: int = 0
    """Dropouts: devices whose task stream was closed when the task was sent."""
    vanished: int = 0
    """Dropouts: devices that went silent mid-round (no heartbeat, stream broken)."""
    revoked: int = 0
    """Dropouts: devices revoked mid-round; their task was cancelled at once."""
    dropouts: int = 0
    """``not_connected + vanished + revoked``, as the simulation grid counts dropouts."""
    cancelled: int = 0
    """Surplus: devices still working when the quorum of good replies was in."""
    surplus_dropped: int = 0
    """Surplus: replies beyond the quorum that came in the same instant, dropped."""
    late_dropped: int = 0
    """Replies that arrived after the round returned, refused (counted after it closed)."""
    refused_uploads: int = 0
    """Uploads refused as oversized, corrupt or unsigned."""
    seconds: float = 0.0
    """From dispatch to close, on the server's clock."""
    dispatch_seconds: float = 0.0
    """Of ``seconds``: sealing (serializing and signing) the tasks and queueing them."""
    timed_out_nodes: list[int] = field(default_factory=list)
    dropout_nodes: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Total the dropouts once the round is over."""
        self.dropouts = self.not_connected + self.vanished + self.revoked

    def timing(self, clock: float) -> RoundTiming:
        """The round as the simulation grid reports one."""
        return RoundTiming(
            dispatched=self.sent,
            participants=self.participants,
            stragglers=self.timed_out,
            dropouts=self.dropouts,
            surplus=self.cancelled + self.surplus_dropped,
            seconds=self.seconds,
            clock=clock,
            straggler_ids=tuple(self.timed_out_nodes),
            dropout_ids=tuple(self.dropout_nodes),
        )

    def problems(self) -> str | None:
        """The round's line for the server's log, or ``None`` when every device answered."""
        noted = [f"{name} {getattr(self, name)}" for name in NOTED if getattr(self, name)]
        if not noted:
            return None
        head = f"round {self.group_id}: {self.participants}/{self.sent} answered"
        return " · ".join([head, *noted])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


class RunEndReason(enum.StrEnum):
    """Why the run ended, as the agents are told."""

    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def wire(self) -> edge_pb2.RunEndReason:
        """The ``stamen.edge.v1.RunEndReason`` value."""
        return {
            RunEndReason.FINISHED: edge_pb2.RUN_END_REASON_FINISHED,
            RunEndReason.STOPPED: edge_pb2.RUN_END_REASON_STOPPED,
            RunEndReason.FAILED: edge_pb2.RUN_END_REASON_FAILED,
        }[self]


@dataclass(frozen=True)
class RunEnd:
    """The end of the run: why, in one line for the devices' logs."""

    reason: RunEndReason
    message: str
    ended_unix: float = field(default_factory=time.time)

    @classmethod
    def of_summary(cls, summary: dict[str, Any] | None) -> RunEnd:
        """The end a finished ServerApp's summary describes (``None``: it gave none)."""
        if summary is None:
            return cls(RunEndReason.FINISHED, "finished")
        rounds = summary.get("rounds", 0)
        if summary.get("stopped"):
            return cls(RunEndReason.STOPPED, f"stopped by an operator after {rounds} rounds")
        return cls(RunEndReason.FINISHED, f"finished {rounds} rounds")

    @classmethod
    def interrupted(cls) -> RunEnd:
        """The end of a run whose server was interrupted (Ctrl-C, SIGTERM)."""
        return cls(RunEndReason.STOPPED, "the server was interrupted")

    @classmethod
    def failed(cls) -> RunEnd:
        """The end of a run the server could not finish (its log says why)."""
        return cls(RunEndReason.FAILED, "the server failed; its operator has the reason")
