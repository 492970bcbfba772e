"""How a round's devices are shared out among workers, whatever the workers are.

The server keeps each device's state between rounds (:class:`DeviceStates`) and sends it
along with the device's task; the worker that runs the task sends the new state back with
the reply. Any worker can then run any device, so a round is handed out in chunks of
consecutive devices to whichever worker runs short of work first, and the workers finish
a round together. A chunk is one training group (``device_batch``), so which devices train
together depends only on the order of the round's messages, not on timing, the number of
workers, or where they run: forked processes on this machine
(:class:`~stamen.simulations.workers.WorkerPool`) or Ray actors across a cluster
(:class:`~stamen.simulations.ray_workers.RayWorkerPool`).
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from flwr.app import Message

from stamen.simulations.device_states import DeviceStates

PREFETCH_CHUNKS = 3
"""Chunks a worker is given ahead: enough to keep it training while the server is busy
checking replies."""

Chunk = list[tuple[int, bytes | None]]
"""Message indices of one chunk, each with its device's pickled state (``None``: none)."""

Outcome = tuple[int, Message, bytes | None]
"""What a worker returns for one message: its index, the reply, the device's new state."""


class DevicePool(abc.ABC):
    """Workers that run a round's messages in chunks, keeping each device's state here.

    Subclasses move the bytes: :meth:`_start_round` gives every worker the round's
    messages, :meth:`_send_chunk` one chunk, :meth:`_outcomes` what comes back.
    """

    def __init__(self, chunk: int, states: DeviceStates | None = None) -> None:
        self.chunk = chunk
        """Devices handed to a worker at a time: one training group."""
        self.states = states if states is not None else DeviceStates()
        """Each device's state between its tasks, for the devices that keep any."""
        self.locations: list[str] = []
        """Where each worker runs (a machine, or a Ray node)."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """How many workers the pool has."""

    def run(self, messages: Sequence[Message]) -> Iterator[tuple[int, Message]]:
        """Run ``messages`` across the pool; yields ``(index, reply)`` as replies arrive.

        Every worker receives the round's messages once (a round's devices share one model
        record, serialized once); then chunks of ``chunk`` consecutive message indices, with
        their devices' states, go to whichever worker runs short of work first.
        """
        self._start_round(messages)
        chunks = deque(
            range(start, min(start + self.chunk, len(messages)))
            for start in range(0, len(messages), self.chunk)
        )
        outstanding = [0] * self.size

        def top_up(worker: int) -> None:
            while chunks and outstanding[worker] < self.chunk * PREFETCH_CHUNKS:
                indices = chunks.popleft()
                states = [(i, self.states.take(node_of(messages[i]))) for i in indices]
                self._send_chunk(worker, states)
                outstanding[worker] += len(indices)

        for worker in range(self.size):
            top_up(worker)
        while any(outstanding):
            busy = [worker for worker in range(self.size) if outstanding[worker]]
            for worker, (index, reply, state) in self._outcomes(busy):
                if state is not None:
                    self.states.put(node_of(messages[index]), state)
                outstanding[worker] -= 1
                top_up(worker)
                yield index, reply

    @abc.abstractmethod
    def _start_round(self, messages: Sequence[Message]) -> None:
        """Give every worker the round's messages."""

    @abc.abstractmethod
    def _send_chunk(self, worker: int, chunk: Chunk) -> None:
        """Have ``worker`` run ``chunk``."""

    @abc.abstractmethod
    def _outcomes(self, busy: list[int]) -> Iterable[tuple[int, Outcome]]:
        """Wait until some of the ``busy`` workers have outcomes; ``(worker, outcome)`` each."""

    @abc.abstractmethod
    def _stop(self, *, kill: bool) -> None:
        """Stop the workers: let them finish and wait for them, or (``kill``) at once."""

    def close(self) -> None:
        """Stop the workers, wait for them, and drop the devices' states."""
        try:
            self._stop(kill=False)
        finally:
            self.states.close()

    def terminate(self) -> None:
        """Stop the workers now: the run is being abandoned, so their work is not wanted."""
        try:
            self._stop(kill=True)
        finally:
            self.states.close()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *rest: object) -> None:
        if error_type is None:
            self.close()
        else:
            self.terminate()  # an abandoned run: its workers' work is not wanted


def node_of(message: Message) -> int:
    """The device a message is for."""
    return message.metadata.dst_node_id
