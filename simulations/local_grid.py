"""An in-process Flower ``Grid``: virtual devices run the ClientApp in this process.

The ServerApp cannot tell this grid from Flower's: it samples node ids, pushes
``Message`` objects and pulls replies. Each message runs the unchanged
``ClientApp`` at once, with the device's own persistent ``Context``, so a round
costs only the devices' compute: no Ray, no polling sleeps, no start-up.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from stamen.errors import ConfigError

LOG = logging.getLogger("stamen.simulations")

CLIENT_APP_EXCEPTION = 1
"""Error code of a reply whose ClientApp raised."""

MessageHook = Callable[[Message, Message], None]
"""Called with (instruction, reply) after each device finishes."""


class LocalGrid(Grid):
    """Run virtual devices sequentially in this process.

    Args:
        client_app: the app every device runs.
        num_nodes: how many virtual devices; device ``i`` gets ``partition-id`` i.
        run_config: the run config each device's ``Context`` carries.
        apps_by_partition: a different app for some devices, e.g. a plain Flower
            ClientApp mixed into a Stamen fleet.
        on_reply: optional hook, e.g. to drive a progress bar.

    Examples:
        >>> from stamen.client import FleetData, client_app
        >>> from stamen.config import DataSettings
        >>> fleet = FleetData(DataSettings(dataset="digits"), num_devices=4, seed=0)
        >>> grid = LocalGrid(client_app(fleet), num_nodes=4)
        >>> sorted(grid.get_node_ids())
        [1, 2, 3, 4]
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        run_config: Mapping[str, bool | int | float | str] | None = None,
        apps_by_partition: Mapping[int, ClientApp] | None = None,
        on_reply: MessageHook | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1; got {num_nodes}")
        self._run = Run.create_empty(run_id=1)
        # Flower stamps new messages with the process's task identity, as its own
        # simulation runtime does; this grid plays the SuperLink for the ServerApp.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._apps = {pid: client_app for pid in range(num_nodes)}
        self._apps.update(apps_by_partition or {})
        self._contexts = {
            pid + 1: Context(
                run_id=self._run.run_id,
                node_id=pid + 1,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for pid in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self._on_reply = on_reply

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

    def get_node_ids(self) -> Iterable[int]:
        """Ids of all virtual devices: partition id + 1."""
        return list(self._contexts)

    def context_of(self, node_id: int) -> Context:
        """A device's persistent context (its state survives across rounds)."""
        return self._contexts[node_id]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its device, which handles it before this returns."""
        ids: list[str] = []
        for message in messages:
            message_id = uuid.uuid4().hex
            # Flower's own in-memory grid sets the id the same way: it is read-only.
            message.metadata.__dict__["_message_id"] = message_id
            self._replies[message_id] = self._execute(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Collect (and forget) the replies to ``message_ids``."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Run every message's device and return all replies."""
        return self.pull_messages(self.push_messages(messages))

    def _execute(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        if context is None:
            reply = Message(
                Error(code=CLIENT_APP_EXCEPTION, reason=f"no such node: {node_id}"),
                reply_to=message,
            )
        else:
            app = self._apps[int(context.node_config["partition-id"])]
            try:
                reply = app(message, context)
            except Exception as error:  # a device failure must not end the round
                LOG.debug("node %s failed:\n%s", node_id, traceback.format_exc())
                reply = Message(
                    Error(code=CLIENT_APP_EXCEPTION, reason=f"{type(error).__name__}: {error}"),
                    reply_to=message,
                )
        if self._on_reply is not None:
            self._on_reply(message, reply)
        return reply
