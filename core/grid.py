"""What every Stamen grid shares: it plays the SuperLink for the ServerApp, and closes rounds.

Flower's :class:`~flwr.serverapp.Grid` is an abstract base class. The Stamen
grids (the in-process grid and the simulation grid in ``stamen.simulations``,
the edge grid in ``stamen.server.edge``) differ only in where devices run and
how replies come back; the run they serve, how a message is made and named,
and how a :class:`~stamen.core.fleet.RoundPolicy` is kept are the same, and
live here.

Examples:
    >>> from flwr.app import RecordDict
    >>> class NoDevices(StamenGrid):
    ...     def get_node_ids(self): return []
    ...     def push_messages(self, messages): return [assign_message_id(m) for m in messages]
    ...     def pull_messages(self, message_ids): return []
    ...     def send_and_receive(self, messages, *, timeout=None): return []
    >>> grid = NoDevices()
    >>> message = grid.create_message(RecordDict(), "train", 7, "1")
    >>> message.metadata.dst_node_id, grid.run.run_id
    (7, 1)
    >>> len(list(grid.push_messages([message]))[0]) == 32 == len(message.metadata.message_id)
    True
"""

from __future__ import annotations

import abc
import uuid

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from stamen.core.fleet import RoundPolicy, RoundTiming


def assign_message_id(message: Message) -> str:
    """Give an outgoing message a fresh id, as Flower's own grids do; returns it."""
    message_id = uuid.uuid4().hex
    # The id is read-only in Flower's API; its in-memory grid sets it the same way.
    message.metadata.__dict__["_message_id"] = message_id
    return message_id


class StamenGrid(Grid):
    """A Flower ``Grid`` run by Stamen itself rather than by a SuperLink."""

    def __init__(self) -> None:
        self._run = Run.create_empty(run_id=1)
        # Flower stamps new messages with the process's task identity, as its own
        # simulation runtime does: this grid plays the SuperLink for the ServerApp
        # (and forked simulation workers inherit the identity).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        """Adopt the run Flower assigns."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create an instruction message."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


class RoundPolicyGrid(StamenGrid):
    """A Stamen grid that closes rounds by the strategy's :class:`RoundPolicy`.

    It is a :class:`~stamen.core.fleet.PolicyGrid`: a subclass keeps a clock
    (``now``), applies ``self.round_policy`` in ``send_and_receive`` and records
    each training round's :class:`RoundTiming` with :meth:`record_timing`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.round_policy = RoundPolicy()
        """Until a strategy sets one: wait for every device, with no deadline."""
        self._timing: RoundTiming | None = None

    @property
    @abc.abstractmethod
    def now(self) -> float:
        """Seconds on the grid's clock since the run started."""

    def set_round_policy(self, policy: RoundPolicy) -> None:
        """Apply ``policy`` to the following ``send_and_receive`` calls."""
        self.round_policy = policy

    def last_timing(self) -> RoundTiming | None:
        """Timing of the most recent training round (of any exchange, before the first)."""
        return self._timing

    def record_timing(self, message_type: str, timing: RoundTiming) -> None:
        """Keep ``timing`` as the last round's, if it is a training exchange or the first."""
        if message_type == "train" or self._timing is None:
            self._timing = timing
