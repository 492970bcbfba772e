"""What every Stamen grid of virtual devices shares: it plays the SuperLink for the ServerApp."""

from __future__ import annotations

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class VirtualGrid(Grid):
    """A Flower ``Grid`` whose devices are simulated on this machine."""

    def __init__(self) -> None:
        self._run = Run.create_empty(run_id=1)
        # Flower stamps new messages with the process's task identity, as its own
        # simulation runtime does; this grid plays the SuperLink for the ServerApp
        # (and forked workers inherit the identity).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        """Adopt the run id Flower assigns."""
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
        """Create an instruction message (kept for Grid API compatibility)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)
