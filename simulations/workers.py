"""A pool of forked worker processes that run virtual devices' ``ClientApp``.

The parent keeps each device's state between rounds (its ``Context.state``:
the error-feedback residual, counters), pickled, and sends it along with the
device's task; the worker that runs the task sends the new state back with the
reply. How a round is shared out is :mod:`stamen.simulations.pool`'s: chunks of
one training group to whichever worker runs short first. A device without state
costs nothing between rounds: a million-device fleet costs nothing until it trains.

Workers are forked after the dataset is loaded, so they share its pages with
the parent, and each runs torch on one thread: a device's arithmetic is then
the same whichever worker runs it, and results do not depend on the pool size.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import queue
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from stamen.core.errors import StamenError
from stamen.simulations.device_states import DeviceStates
from stamen.simulations.pool import Chunk, DevicePool, Outcome, node_of
from stamen.simulations.worker_process import become_worker

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

    def adopt(self, node_id: int, state: RecordDict | None) -> None:
        """Give the device the state it kept from an earlier round in another process."""
        self.context_of(node_id).state = state if state is not None else RecordDict()

    def release(self, node_id: int) -> RecordDict | None:
        """Drop the device's context here and return its state (``None`` if it has none)."""
        context = self.contexts.pop(node_id, None)
        if context is None or len(context.state) == 0:
            return None
        return context.state

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


def run_chunk(runner: DeviceRunner, messages: Sequence[Message], chunk: Chunk) -> Iterator[Outcome]:
    """A worker's side of one chunk: give each device its state, run the chunk's messages,
    and yield each reply with the device's new state, pickled (``None``: it keeps none)."""
    nodes = {}
    for index, state in chunk:
        nodes[index] = node_of(messages[index])
        runner.adopt(nodes[index], None if state is None else pickle.loads(state))
    for index, reply in runner.run_all([(index, messages[index]) for index, _ in chunk]):
        kept = runner.release(nodes[index])
        yield index, reply, None if kept is None else pickle.dumps(kept, pickle.HIGHEST_PROTOCOL)


_ROUND, _CHUNK = "round", "chunk"


class WorkerPool(DevicePool):
    """``workers`` forked processes that share out each round's devices.

    Use as a context manager, or call :meth:`close`; leaving the context on an
    exception (Ctrl-C, SIGTERM, an error) kills the workers at once. The workers
    also die with the parent, however it ends (:mod:`~stamen.simulations.worker_process`).
    """

    def __init__(
        self, runner: DeviceRunner, workers: int, states: DeviceStates | None = None
    ) -> None:
        if workers < 1:
            raise StamenError(f"a worker pool needs at least one worker; got {workers}")
        super().__init__(runner.device_batch, states)
        context = multiprocessing.get_context("fork")
        self.connections: list[Connection] = []
        self.processes: list[Any] = []
        # What exists now (modules, the dataset, the apps) lives as long as the run. Frozen,
        # the collector stops walking it: a full collection cost about 150 ms of a round,
        # and in a worker it would write to pages it otherwise shares with the parent.
        gc.freeze()
        for index in range(workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve, args=(runner, child_end), name=f"stamen-worker-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self.connections.append(parent_end)
            self.processes.append(process)
        self.locations = ["this machine"] * workers

    @property
    def size(self) -> int:
        """How many workers the pool has."""
        return len(self.connections)

    def _start_round(self, messages: Sequence[Message]) -> None:
        pickled = bytes(ForkingPickler.dumps((_ROUND, list(messages))))
        for worker, connection in enumerate(self.connections):
            with _reporting_death(worker):
                connection.send_bytes(pickled)

    def _send_chunk(self, worker: int, chunk: Chunk) -> None:
        with _reporting_death(worker):
            self.connections[worker].send((_CHUNK, chunk))

    def _outcomes(self, busy: list[int]) -> Iterator[tuple[int, Outcome]]:
        for ready in wait([self.connections[worker] for worker in busy]):
            connection = pending_connection(ready)
            worker = self.connections.index(connection)
            with _reporting_death(worker):
                outcome: Outcome = connection.recv()
            yield worker, outcome

    def _stop(self, *, kill: bool) -> None:
        if kill:
            for process in self.processes:
                process.kill()
            for process in self.processes:
                process.join()
            for connection in self.connections:
                connection.close()
        else:
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
        gc.unfreeze()


@contextlib.contextmanager
def _reporting_death(worker: int) -> Iterator[None]:
    # A killed worker shows as EOF, or as a reset or broken pipe when bytes were still
    # in flight; all three mean the same to the user.
    try:
        yield
    except (EOFError, OSError):
        raise StamenError(
            f"simulation worker {worker} died (out of memory?); the run stops here"
        ) from None


def _serve(runner: DeviceRunner, connection: Connection) -> None:
    become_worker()
    # One thread drains the pipe as work arrives, so the parent never waits on a send to a
    # worker that is itself waiting to send a reply. Another sends the replies: a reply is
    # larger than the pipe's buffer, and training goes on while the parent is busy
    # checking another worker's reply instead of waiting for it to read this one.
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(connection, inbox), daemon=True).start()
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send, args=(connection, outbox), daemon=True)
    sender.start()
    messages: list[Message] = []
    while True:
        item = inbox.get()
        if item is None:
            outbox.put(None)
            sender.join()
            return
        kind, payload = item
        if kind == _ROUND:
            messages = payload
            continue
        for outcome in run_chunk(runner, messages, payload):
            outbox.put(bytes(ForkingPickler.dumps(outcome)))


def _receive(connection: Connection, inbox: queue.SimpleQueue[Any]) -> None:
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            item = None
        inbox.put(item)
        if item is None:
            return


def _send(connection: Connection, outbox: queue.SimpleQueue[bytes | None]) -> None:
    while (item := outbox.get()) is not None:
        try:
            connection.send_bytes(item)
        except OSError:  # the parent is gone; the reader thread ends the worker
            return


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
