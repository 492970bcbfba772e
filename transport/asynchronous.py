"""Asynchronous dispatch (FedBuff's transport): keep devices busy, buffer their valid updates.

The server keeps ``concurrency`` devices training at all times, each on whichever
model version it was handed; whenever a device replies, another idle device gets
the current model. Valid replies wait in a buffer, with the version each trained
on, until an aggregation takes ``buffer_size`` of them. Only the Grid's
``push_messages`` and ``pull_messages`` are used.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import MessageType
from flwr.serverapp import Grid

from stamen.core.fleet import PolicyGrid, RoundPolicy
from stamen.transport.node_ids import sorted_node_ids
from stamen.transport.reply_validation import SentModel, ValidUpdate
from stamen.transport.stats import RoundStats
from stamen.transport.transport import CompressedTransport


class AsyncDispatch:
    """The moving parts of an asynchronous run: versions sent, messages in flight, the buffer.

    Args:
        transport: Samples, encodes, addresses and validates, as in a synchronous round.
        grid: Any grid that hands back replies as they complete.
        model: The global model to publish first.
        buffer: Valid updates already waiting (a resumed run's), with their model versions.
        first_version: The first version published.
        concurrency: Devices kept training at once.
        buffer_size: Updates each aggregation takes.
        poll_interval: Wall-clock seconds between polls when no reply is ready.
    """

    def __init__(
        self,
        transport: CompressedTransport,
        grid: Grid,
        model: dict[str, np.ndarray],
        buffer: list[tuple[ValidUpdate, int]],
        first_version: int,
        *,
        concurrency: int,
        buffer_size: int,
        poll_interval: float,
    ) -> None:
        self.transport = transport
        self.concurrency, self.buffer_size, self.poll_interval = (
            concurrency,
            buffer_size,
            poll_interval,
        )
        self.grid = grid
        self.model = model
        self.version = 0
        self.sent: dict[int, SentModel] = {}
        self.in_flight: dict[str, tuple[int, int]] = {}
        """Message id to (node id, model version it carries)."""
        self.buffer = buffer
        """Valid updates waiting for aggregation, with the model version each trained on."""
        self.publish(first_version)

    def publish(self, version: int) -> None:
        """Make ``version`` the model handed to devices from now on."""
        transport = self.transport
        if isinstance(self.grid, PolicyGrid):
            # No quorum: every reply counts. A task unanswered at the deadline (the
            # strategy's, which an operator may change) expires.
            self.grid.set_round_policy(RoundPolicy(deadline=transport.deadline))
        stats = transport.stats.setdefault(version, RoundStats(version))
        dense = transport._prune(version, self.model)
        self.model = dense
        self.sent[version] = transport._encode(version, dense)
        stats.sparsity = transport.schedule.sparsity_at(version) if transport.masks else 0.0
        self.version = version
        live = {v for _, v in self.in_flight.values()} | {version}
        self.sent = {v: sent for v, sent in self.sent.items() if v in live}

    def dispatch(self) -> None:
        """Hand the current model to idle devices until ``concurrency`` are training."""
        transport = self.transport
        wanted = self.concurrency - len(self.in_flight)
        if wanted <= 0:
            return
        busy = {node for node, _ in self.in_flight.values()}
        node_ids = sorted_node_ids(self.grid)
        idle = node_ids[~np.isin(node_ids, list(busy))] if busy else node_ids
        if not len(idle):
            return
        chosen = transport.rng.choice(len(idle), size=min(wanted, len(idle)), replace=False)
        nodes = [int(idle[i]) for i in sorted(chosen)]
        stats = transport.stats[self.version]
        task = transport.task.replace(round_num=self.version)
        sent = self.sent[self.version]
        messages = [transport._message(n, sent, task, MessageType.TRAIN, stats) for n in nodes]
        stats.sampled += len(messages)
        for node, message_id in zip(nodes, self.grid.push_messages(messages), strict=True):
            self.in_flight[message_id] = (node, self.version)

    def fill_buffer(self, timeout: float) -> list[tuple[ValidUpdate, int]] | None:
        """Keep devices busy until ``buffer_size`` valid updates wait; ``None`` on timeout.

        Returns the buffered updates with their staleness against the current version.
        """
        transport = self.transport
        deadline = time.monotonic() + timeout
        while len(self.buffer) < self.buffer_size:
            self.dispatch()
            if not self.in_flight:  # no device connected (yet): wait for one
                if time.monotonic() > deadline:
                    return None
                time.sleep(self.poll_interval)
                continue
            replies = list(self.grid.pull_messages(list(self.in_flight)))
            if not replies:
                if time.monotonic() > deadline:
                    return None
                time.sleep(self.poll_interval)
                continue
            deadline = time.monotonic() + timeout
            for reply in replies:
                entry = self.in_flight.pop(reply.metadata.reply_to_message_id, None)
                if entry is None:
                    continue
                node, version = entry
                if reply.metadata.src_node_id != node:
                    transport.reject(
                        self.version,
                        transport.stats[self.version],
                        reply.metadata.src_node_id,
                        "reply does not answer the task this device was sent",
                    )
                    continue
                update = transport.accept_reply(
                    reply, version, self.sent[version], transport.stats[self.version]
                )
                if update is not None:
                    self.buffer.append((update, version))
        size = self.buffer_size
        buffer, self.buffer = self.buffer[:size], self.buffer[size:]
        return [(update, self.version - version) for update, version in buffer]
