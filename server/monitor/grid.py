"""A Grid wrapper that tells the monitor which devices each round asked and who answered.

It works with any ``flwr.serverapp.Grid`` (the simulation grid, Flower's
grids, the edge grid), because it only watches the messages going through.
A grid that knows device tiers may offer ``tier_of(node_id) -> str``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from stamen.contract import array_nbytes, message_nbytes
from stamen.core.fleet import PolicyGrid, RoundPolicy, RoundTiming, StreamingGrid, TieredGrid

if TYPE_CHECKING:
    from stamen.server.monitor.state import MonitorState


class ObservedGrid(Grid):
    """Delegates to ``inner`` and reports training messages and replies to ``state``."""

    def __init__(self, inner: Grid, state: MonitorState) -> None:
        self.inner = inner
        self.state = state
        self._hook: Callable[[Message], None] | None = None

    @property
    def run(self) -> Run:
        """The inner grid's run."""
        return self.inner.run

    def set_run(self, run: Run) -> None:
        """Forward to the inner grid."""
        self.inner.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Forward to the inner grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Forward to the inner grid."""
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Report the round start, then forward."""
        messages = list(messages)
        self._started(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Forward, then report each reply."""
        replies = list(self.inner.pull_messages(message_ids))
        self._replied(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Report the round start, forward, then report each reply."""
        messages = list(messages)
        self._started(messages)
        streaming = self.inner if isinstance(self.inner, StreamingGrid) else None
        if streaming is not None:
            # Each reply is shown as it arrives, not only when the round closes. Only
            # here: an asynchronous pull decides itself when a reply has arrived.
            streaming.on_each_reply(self._arrived)
        try:
            replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        finally:
            if streaming is not None:
                streaming.on_each_reply(self._hook)
        self._replied(replies)
        self._closed(messages)
        return replies

    # -- the stamen.core.fleet extensions of the inner grid, where it has them ---------------

    @property
    def now(self) -> float:
        """The inner grid's clock (0 if it keeps none)."""
        return float(getattr(self.inner, "now", 0.0))

    @property
    def simulated_clock(self) -> bool:
        """Whether the inner grid's devices and time are simulated."""
        return bool(getattr(self.inner, "simulated_clock", False))

    def set_round_policy(self, policy: RoundPolicy) -> None:
        """Forward the round policy, if the inner grid applies one."""
        if isinstance(self.inner, PolicyGrid):
            self.inner.set_round_policy(policy)

    def last_timing(self) -> RoundTiming | None:
        """The inner grid's last round timing, if it reports one."""
        return self.inner.last_timing() if isinstance(self.inner, PolicyGrid) else None

    def on_each_reply(self, hook: Callable[[Message], None] | None) -> None:
        """Forward the reply hook, if the inner grid streams replies."""
        self._hook = hook
        if isinstance(self.inner, StreamingGrid):
            self.inner.on_each_reply(hook)

    def tier_of(self, node_id: int) -> str | None:
        """The inner grid's tier of ``node_id``, if it knows tiers."""
        return self.inner.tier_of(node_id) if isinstance(self.inner, TieredGrid) else None

    def _started(self, messages: list[Message]) -> None:
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if not train:
            return
        tiered = isinstance(self.inner, TieredGrid)
        nodes = [m.metadata.dst_node_id for m in train]
        self.state.round_started(
            _round_of(train[0]),
            nodes,
            downlink_bytes={
                m.metadata.dst_node_id: sum(
                    array_nbytes(a) for r in m.content.array_records.values() for a in r.values()
                )
                for m in train
            },
            tiers={n: str(self.tier_of(n)) for n in nodes} if tiered else None,
        )

    def _arrived(self, reply: Message) -> None:
        self._replied([reply])
        if self._hook is not None:
            self._hook(reply)

    def _replied(self, replies: list[Message]) -> None:
        for reply in replies:
            if reply.metadata.message_type != MessageType.TRAIN:
                continue
            error = reply.error.reason if reply.has_error() else None
            self.state.device_replied(
                _round_of(reply),
                reply.metadata.src_node_id,
                uplink_bytes=message_nbytes(reply),
                error=error,
            )

    def _closed(self, messages: list[Message]) -> None:
        """The round is closed: pass on which devices the grid counted as stragglers and
        dropouts, where it says."""
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if not train:
            return
        timing = self.last_timing()
        named = timing is not None and bool(
            timing.straggler_ids or timing.dropout_ids or not (timing.stragglers or timing.dropouts)
        )
        self.state.round_closed(
            _round_of(train[0]),
            stragglers=timing.straggler_ids if timing is not None and named else None,
            dropouts=timing.dropout_ids if timing is not None and named else None,
        )


def _round_of(message: Message) -> int:
    """The round a message belongs to: Flower's strategies put it in ``group_id``."""
    try:
        return int(message.metadata.group_id)
    except ValueError:
        return 0
