"""A pool of forked worker processes that run virtual devices' ``ClientApp``.

A device whose ``Context`` holds state (its error-feedback residual, counters)
belongs to the worker that holds it, for the whole run: contexts never travel.
A device without state yet can run anywhere, so each round hands those to the
workers with the least work, and the workers finish their rounds together.
Contexts are created on a device's first task: a 10,000-device fleet costs
nothing until it trains.

Workers are forked after the dataset is loaded, so they share its pages with
the parent, and each runs torch on one thread: a device's arithmetic is then
the same whichever worker runs it, and results do not depend on the pool size.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from stamen.errors import StamenError

LOG = logging.getLogger("stamen.simulations")

CLIENT_APP_EXCEPTION = 1
"""Error code of a reply whose ClientApp raised."""

RunConfig = Mapping[str, bool | int | float | str]

TrainBatch = Callable[[Sequence[tuple[Message, Context]]], Sequence[Message | Exception]]
"""Trains several devices' tasks together; returns each reply, or the error it raised."""


class DeviceRunner:
    """Runs one device's task in the current process, keeping each device's context."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_id: int,
        run_config: RunConfig,
        *,
        apps_by_partition: Mapping[int, ClientApp] | None = None,
        train_batch: TrainBatch | None = None,
        device_batch: int = 1,
    ) -> None:
        self.client_app = client_app
        self.apps_by_partition = dict(apps_by_partition or {})
        self.train_batch = train_batch
        self.device_batch = device_batch if train_batch is not None else 1
        self.num_nodes = num_nodes
        self.run_id = run_id
        self.run_config = dict(run_config)
        self.contexts: dict[int, Context] = {}

    def context_of(self, node_id: int) -> Context:
        """The device's persistent context, created on first use."""
        context = self.contexts.get(node_id)
        if context is None:
            context = Context(
                run_id=self.run_id,
                node_id=node_id,
                node_config={"partition-id": node_id - 1, "num-partitions": self.num_nodes},
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
            self.contexts[node_id] = context
        return context

    def keeps_state(self, node_id: int) -> bool:
        """Whether the device's context holds state; a context without any is dropped, so
        the device can run in any worker next time."""
        context = self.contexts.get(node_id)
        if context is not None and len(context.state) == 0:
            del self.contexts[node_id]
            return False
        return context is not None

    def run(self, message: Message) -> Message:
        """Handle ``message`` on its device; a failing device answers with an ``Error``."""
        node_id = message.metadata.dst_node_id
        if not 1 <= node_id <= self.num_nodes:
            return Message(
                Error(code=CLIENT_APP_EXCEPTION, reason=f"no such node: {node_id}"),
                reply_to=message,
            )
        app = self.apps_by_partition.get(node_id - 1, self.client_app)
        try:
            return app(message, self.context_of(node_id))
        except Exception as error:  # a device failure must not end the round
            return failed(message, error)

    def run_all(self, batch: Sequence[tuple[int, Message]]) -> Iterator[tuple[int, Message]]:
        """Handle a worker's share of a round, yielding ``(index, reply)`` as replies are ready.

        Training tasks go to ``train_batch`` ``device_batch`` at a time; the rest, one by one.
        """
        group: list[tuple[int, Message]] = []
        for index, message in batch:
            if not self._batchable(message):
                yield index, self.run(message)
                continue
            group.append((index, message))
            if len(group) == self.device_batch:
                yield from self._run_group(group)
                group = []
        if group:
            yield from self._run_group(group)

    def _batchable(self, message: Message) -> bool:
        node_id = message.metadata.dst_node_id
        return (
            self.device_batch > 1
            and message.metadata.message_type == "train"
            and 1 <= node_id <= self.num_nodes
            and node_id - 1 not in self.apps_by_partition
        )

    def _run_group(self, group: list[tuple[int, Message]]) -> Iterator[tuple[int, Message]]:
        if self.train_batch is None or len(group) == 1:
            for index, message in group:
                yield index, self.run(message)
            return
        tasks = [(message, self.context_of(message.metadata.dst_node_id)) for _, message in group]
        try:
            outcomes = self.train_batch(tasks)
        except Exception:  # a fault in the batch path must not cost the devices their round
            LOG.warning("training devices together failed; running them one by one", exc_info=True)
            outcomes = [self.run(message) for _, message in group]
        for (index, message), outcome in zip(group, outcomes, strict=True):
            yield index, outcome if isinstance(outcome, Message) else failed(message, outcome)


def failed(message: Message, error: Exception) -> Message:
    """The ``Error`` reply of a device whose ClientApp raised ``error``."""
    LOG.debug(
        "node %s failed:\n%s",
        message.metadata.dst_node_id,
        "".join(traceback.format_exception(error)),
    )
    return Message(
        Error(code=CLIENT_APP_EXCEPTION, reason=f"{type(error).__name__}: {error}"),
        reply_to=message,
    )


class WorkerPool:
    """``workers`` forked processes, each running the devices whose id maps to it.

    Use as a context manager, or call :meth:`close`; the workers also exit
    when the parent does, since they read from pipes the parent holds.
    """

    def __init__(self, runner: DeviceRunner, workers: int) -> None:
        if workers < 1:
            raise StamenError(f"a worker pool needs at least one worker; got {workers}")
        context = multiprocessing.get_context("fork")
        self.connections: list[Connection] = []
        self.processes: list[Any] = []
        self.homes: dict[int, int] = {}
        """The worker holding each device whose context keeps state."""
        for index in range(workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve, args=(runner, child_end), name=f"stamen-worker-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self.connections.append(parent_end)
            self.processes.append(process)

    @property
    def size(self) -> int:
        """How many workers the pool has."""
        return len(self.connections)

    def run(self, messages: Sequence[Message]) -> Iterator[tuple[int, Message]]:
        """Run ``messages`` across the pool; yields ``(index, reply)`` as replies arrive."""
        shares = self.assign(messages)
        pending: dict[Connection, int] = {}
        for connection, batch in zip(self.connections, shares, strict=True):
            if batch:
                connection.send([(i, messages[i]) for i in batch])
                pending[connection] = len(batch)
        while pending:
            for ready in wait(list(pending)):
                connection = pending_connection(ready)
                try:
                    index, reply, keeps_state = connection.recv()
                except EOFError:
                    worker = self.connections.index(connection)
                    raise StamenError(
                        f"simulation worker {worker} died (out of memory?); the run stops here"
                    ) from None
                if keeps_state:
                    self.homes[messages[index].metadata.dst_node_id] = self.connections.index(
                        connection
                    )
                pending[connection] -= 1
                if pending[connection] == 0:
                    del pending[connection]
                yield index, reply

    def assign(self, messages: Sequence[Message]) -> list[list[int]]:
        """Each worker's message indices: a device with state goes to the worker holding it,
        the others to whichever worker has the fewest tasks so far, in message order."""
        shares: list[list[int]] = [[] for _ in self.connections]
        free = []
        for index, message in enumerate(messages):
            home = self.homes.get(message.metadata.dst_node_id)
            if home is None:
                free.append(index)
            else:
                shares[home].append(index)
        for index in free:
            min(shares, key=len).append(index)
        return [sorted(share) for share in shares]

    def close(self) -> None:
        """Stop the workers and wait for them."""
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(None)
            connection.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        self.connections.clear()
        self.processes.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(runner: DeviceRunner, connection: Connection) -> None:
    # Ctrl-C is the parent's to handle: it stops the pool and writes the results.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    # The server is the critical path (it starts the run and aggregates between rounds,
    # while workers wait): on a busy core it should win.
    with contextlib.suppress(OSError):
        os.nice(5)
    # A process's first optimizer imports torch's compiler stack (about 1 s): pay it now,
    # while the server evaluates the initial model, rather than in the first round.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    while True:
        try:
            batch = connection.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        nodes = {index: message.metadata.dst_node_id for index, message in batch}
        for index, reply in runner.run_all(batch):
            connection.send((index, reply, runner.keeps_state(nodes[index])))


def pending_connection(ready: object) -> Connection:
    """``wait`` returns what it was given: here, always a pipe end."""
    if not isinstance(ready, Connection):
        raise TypeError(f"expected a pipe connection, got {type(ready).__name__}")
    return ready


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


ReplyHook = Callable[[Message, Message], None]
"""Called with (instruction, reply) as each device finishes."""
