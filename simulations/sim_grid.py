"""The Stamen simulation grid: a fleet of virtual devices with tiers and a simulated clock.

It is a Flower :class:`~flwr.serverapp.Grid`, so the unchanged ServerApp and
strategies drive it; the unchanged ClientApp runs each device's task in a pool
of workers: forked processes (:mod:`stamen.simulations.workers`) or Ray actors
across a cluster (:mod:`stamen.simulations.ray_workers`). Wall time is only the
devices' compute. The *simulated* clock instead says how long the round would
take on the real fleet: each device finishes at

    dispatch + download(model bytes) + train(samples x epochs x FLOPs, tier speed)
             + upload(its actual encoded reply bytes)

on its tier's links (:mod:`stamen.simulations.profiles`). Devices go offline by
their tier's availability and drop out of tasks by its dropout probability.

``send_and_receive`` closes a round by the :class:`~stamen.core.fleet.RoundPolicy`
the strategy set: at the quorum (over-selection) or the deadline, first wins;
later replies are stragglers (past the deadline) or surplus (past the quorum).
``push_messages`` / ``pull_messages`` are asynchronous on the same clock: a
pull returns the replies complete by now, or advances the clock to the next
completion, which is what an asynchronous strategy such as FedBuff needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord
from flwr.clientapp import ClientApp

from stamen.contract import CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES, message_nbytes, records_of
from stamen.core.fleet import RoundTiming
from stamen.core.grid import RoundPolicyGrid, assign_message_id
from stamen.simulations.device_states import DEFAULT_MEMORY_BUDGET, DeviceStates
from stamen.simulations.pool import DevicePool
from stamen.simulations.profiles import Fleet
from stamen.simulations.workers import (
    DeviceRunner,
    ReplyHook,
    RunConfig,
    TrainBatch,
    WorkerPool,
)

PoolFactory = Callable[[DeviceRunner, int, DeviceStates], DevicePool]
"""Starts ``workers`` workers for a runner, keeping device states in the given store."""

LOG = logging.getLogger("stamen.simulations")

DEVICE_DROPPED_OUT = 2
"""Error code of the reply an asynchronous pull gets for a device that went away."""


@dataclass(frozen=True)
class Completion:
    """When one device's reply reaches the server on the simulated clock."""

    finished: float
    dropped: bool


class SimulationGrid(RoundPolicyGrid):
    """Virtual devices with tiers and a simulated clock, run by a worker pool.

    Args:
        client_app: the app every device runs.
        fleet: each device's tier (partition ``i`` is node ``i + 1``).
        flops_per_sample: training cost of the model, for the simulated clock.
        workers: worker processes (each runs torch on one thread).
        run_config: the run config each device's ``Context`` carries.
        on_reply: optional hook called as each device finishes (progress bars).
        train_batch: trains several devices' tasks together (the Stamen client's
            ``handle_train_batch``); ``None``: every task goes through ``client_app``.
        device_batch: how many training tasks a worker hands ``train_batch`` at a time.
        state_memory: bytes of device state kept in memory; the rest spills to disk.
        pool: starts the workers (default: forked processes, :class:`WorkerPool`; Ray actors
            across a cluster: :class:`~stamen.simulations.ray_workers.RayWorkerPool`).

    Examples:
        >>> from stamen.client import FleetData, client_app
        >>> from stamen.config import DataSettings
        >>> from stamen.config import FleetPreset, fleet_mix
        >>> from stamen.simulations.profiles import build_fleet
        >>> fleet = build_fleet(fleet_mix(FleetPreset.IDEAL), num_devices=4, seed=0)
        >>> data = FleetData(DataSettings(dataset="digits"), num_devices=4, seed=0)
        >>> with SimulationGrid(client_app(data), fleet, flops_per_sample=1e5) as grid:
        ...     sorted(grid.get_node_ids()), grid.tier_of(1), grid.now
        ([1, 2, 3, 4], 'phone', 0.0)
    """

    def __init__(
        self,
        client_app: ClientApp,
        fleet: Fleet,
        *,
        flops_per_sample: float,
        workers: int = 1,
        run_config: RunConfig | None = None,
        on_reply: ReplyHook | None = None,
        train_batch: TrainBatch | None = None,
        device_batch: int = 1,
        state_memory: int = DEFAULT_MEMORY_BUDGET,
        pool: PoolFactory = WorkerPool,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.flops_per_sample = flops_per_sample
        self._on_reply = on_reply
        self._now = 0.0
        self._dispatches = 0
        self._pending: dict[str, tuple[Completion, Message]] = {}
        self._each_reply: Callable[[Message], None] | None = None
        runner = DeviceRunner(
            client_app,
            fleet.num_devices,
            self._run.run_id,
            run_config or {},
            train_batch=train_batch,
            device_batch=device_batch,
        )
        self._pool = pool(runner, workers, DeviceStates(state_memory))
        self.simulated_clock = True
        """Marks a grid whose device set and time are simulated (no waiting for devices)."""

    # -- Grid ------------------------------------------------------------------

    def get_node_ids(self) -> NodeIds:
        """Ids of the devices online now on the simulated clock, ascending."""
        return NodeIds(self.fleet.online(self._now) + 1)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Dispatch ``messages`` now; each completes at its own simulated time."""
        batch = list(messages)
        ids = []
        for message, (completion, reply) in zip(batch, self._execute(batch), strict=True):
            self._pending[message.metadata.message_id] = (completion, reply)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies complete by now; if none is, advance the clock to the next completion."""
        wanted = [mid for mid in message_ids if mid in self._pending]
        if not wanted:
            return []
        ready = [mid for mid in wanted if self._pending[mid][0].finished <= self._now]
        if not ready:
            self._now = min(self._pending[mid][0].finished for mid in wanted)
            ready = [mid for mid in wanted if self._pending[mid][0].finished <= self._now]
        return [self._pending.pop(mid)[1] for mid in ready]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Run one round: dispatch all, then close it by the round policy."""
        batch = list(messages)
        if not batch:
            return []
        start = self._now
        results = self._execute(batch)
        policy = self.round_policy
        order = sorted(range(len(batch)), key=lambda i: results[i][0].finished)
        accepted: list[Message] = []
        surplus = 0
        stragglers: list[int] = []
        dropouts: list[int] = []
        closed_at = start
        for i in order:
            completion, reply = results[i]
            if completion.dropped:
                dropouts.append(batch[i].metadata.dst_node_id)
            elif policy.deadline is not None and completion.finished - start > policy.deadline:
                stragglers.append(batch[i].metadata.dst_node_id)
            elif policy.quorum is not None and len(accepted) >= policy.quorum:
                surplus += 1
            else:
                accepted.append(reply)
                closed_at = max(closed_at, completion.finished)
        quorum_met = policy.quorum is not None and len(accepted) >= policy.quorum
        if policy.deadline is not None and not quorum_met and (stragglers or dropouts):
            # The server cannot tell a straggler from a lost device: it waits out the deadline.
            closed_at = start + policy.deadline
        self._now = closed_at
        self.record_timing(
            batch[0].metadata.message_type,
            RoundTiming(
                dispatched=len(batch),
                participants=len(accepted),
                stragglers=len(stragglers),
                dropouts=len(dropouts),
                surplus=surplus,
                seconds=closed_at - start,
                clock=closed_at,
                straggler_ids=tuple(stragglers),
                dropout_ids=tuple(dropouts),
            ),
        )
        return accepted

    # -- Stamen extensions (stamen.core.fleet protocols) ---------------------------------

    @property
    def now(self) -> float:
        """Simulated seconds since the run started."""
        return self._now

    def on_each_reply(self, hook: Callable[[Message], None] | None) -> None:
        """Show ``hook`` each reply as its worker returns it, while the others still train."""
        self._each_reply = hook

    def tier_of(self, node_id: int) -> str | None:
        """The tier name of ``node_id``."""
        if not 1 <= node_id <= self.fleet.num_devices:
            return None
        return self.fleet.tier(node_id - 1).name

    @property
    def worker_locations(self) -> list[str]:
        """Where each worker runs: this machine, or a Ray node."""
        return list(self._pool.locations)

    @property
    def device_states(self) -> DeviceStates:
        """The state each device that trained keeps between its tasks."""
        return self._pool.states

    def close(self) -> None:
        """Stop the workers."""
        self._pool.close()

    def __enter__(self) -> SimulationGrid:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *rest: object) -> None:
        self._pool.__exit__(error_type, *rest)

    # -- execution -----------------------------------------------------------------

    def _execute(self, batch: list[Message]) -> list[tuple[Completion, Message]]:
        """Run the devices that will answer; time every message on the simulated clock."""
        for message in batch:
            assign_message_id(message)
        dropped = self.fleet.dropouts(self._dispatches)
        self._dispatches += 1
        runnable = [m for m in batch if not self._drops(m, dropped)]
        answered: dict[int, tuple[Completion, Message]] = {}
        for index, reply in self._pool.run(runnable):
            message = runnable[index]
            # Timed as it arrives, while the other workers still train.
            answered[id(message)] = (self._complete(message, reply), reply)
            if self._each_reply is not None:
                self._each_reply(reply)
            if self._on_reply is not None:
                self._on_reply(message, reply)
        results = []
        for message in batch:
            result = answered.get(id(message))
            if result is None:
                reply = Message(
                    Error(code=DEVICE_DROPPED_OUT, reason="device dropped out"), reply_to=message
                )
                result = (self._complete(message, None), reply)
                if self._on_reply is not None:
                    self._on_reply(message, reply)
            results.append(result)
        return results

    def _drops(self, message: Message, dropped: np.ndarray) -> bool:
        pid = message.metadata.dst_node_id - 1
        return 0 <= pid < dropped.shape[0] and bool(dropped[pid])

    def _complete(self, message: Message, reply: Message | None) -> Completion:
        """When ``message``'s reply lands, by the device's tier; ``None``: it dropped out."""
        pid = message.metadata.dst_node_id - 1
        if not 0 <= pid < self.fleet.num_devices:
            return Completion(self._now, dropped=reply is None)
        tier = self.fleet.tier(pid)
        seconds = tier.download_seconds(message_nbytes(message))
        if reply is not None and not reply.has_error():
            samples = reply_samples(reply)
            seconds += tier.train_seconds(
                samples=samples,
                epochs=local_epochs(message),
                flops_per_sample=self.flops_per_sample,
            )
            seconds += tier.upload_seconds(message_nbytes(reply))
        return Completion(self._now + seconds, dropped=reply is None)


class NodeIds(Sequence[int]):
    """Node ids held in one numpy array: a million cost 8 MB, not 36 MB of Python ints.

    It reads as a sequence of ``int``; ``numpy.asarray`` gets the array itself, which is how
    the transport samples from it without a Python object per device.

    Examples:
        >>> ids = NodeIds(np.array([2, 5, 9]))
        >>> len(ids), ids[1], list(ids), np.asarray(ids).dtype
        (3, 5, [2, 5, 9], dtype('int64'))
    """

    def __init__(self, ids: np.ndarray) -> None:
        self._ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> NodeIds: ...

    def __getitem__(self, index: int | slice) -> int | NodeIds:
        if isinstance(index, slice):
            return NodeIds(self._ids[index])
        return int(self._ids[index])

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids.tolist())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self._ids if dtype is None else self._ids.astype(dtype)


def local_epochs(message: Message) -> int:
    """Local epochs the task asks for (1 when the message does not say)."""
    config = records_of(message.content, ConfigRecord).get(CONFIG_KEY)
    if config is None:
        return 1
    # Stamen's TrainTask prefixes its keys; a plain Flower app's config does not.
    value = config.get("stamen.local-epochs", config.get("local-epochs", 1))
    return int(value) if isinstance(value, int | float) else 1


def reply_samples(reply: Message) -> int:
    """Training examples a reply reports, wherever its app put the count."""
    metrics = records_of(reply.content, MetricRecord)
    preferred = metrics.get(METRICS_KEY)
    records = [preferred] if preferred is not None else []
    records += list(metrics.values())
    for record in records:
        value = record.get(NUM_EXAMPLES)
        if isinstance(value, int | float):
            return int(value)
    return 0
