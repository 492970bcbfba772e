"""An in-process Flower ``Grid``: virtual devices run the ClientApp in this process.

The ServerApp cannot tell this grid from Flower's: it samples node ids, pushes
``Message`` objects and pulls replies. Each message runs the unchanged
``ClientApp`` at once, with the device's own persistent ``Context``, so a round
costs only the devices' compute: no Ray, no polling sleeps, no start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from stamen.core.errors import ConfigError
from stamen.core.grid import StamenGrid, assign_message_id
from stamen.simulations.workers import DeviceRunner, ReplyHook, RunConfig


class LocalGrid(StamenGrid):
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
        run_config: RunConfig | None = None,
        apps_by_partition: Mapping[int, ClientApp] | None = None,
        on_reply: ReplyHook | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1; got {num_nodes}")
        super().__init__()
        self._runner = DeviceRunner(
            client_app,
            num_nodes,
            self._run.run_id,
            run_config or {},
            apps_by_partition=apps_by_partition,
        )
        self._replies: dict[str, Message] = {}
        self._on_reply = on_reply

    def get_node_ids(self) -> Iterable[int]:
        """Ids of all virtual devices: partition id + 1."""
        return list(range(1, self._runner.num_nodes + 1))

    def context_of(self, node_id: int) -> Context:
        """A device's persistent context (its state survives across rounds)."""
        return self._runner.context_of(node_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its device, which handles it before this returns."""
        ids: list[str] = []
        for message in messages:
            message_id = assign_message_id(message)
            reply = self._runner.run(message)
            if self._on_reply is not None:
                self._on_reply(message, reply)
            self._replies[message_id] = reply
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
