"""The monitor's bookkeeping: round events, devices and run status of one federation.

:class:`MonitorState` is a :class:`~stamen.server.reporting.RoundReporter`
(rounds ending), a grid observer (rounds starting, devices answering, see
:mod:`stamen.server.monitor.grid`) and a :class:`~stamen.server.control.RunControl`
listener (pauses, stops, setting changes). Every change becomes a numbered
``RoundEvent``; new subscribers replay the history, then wait for more.

Examples:
    >>> state = MonitorState()
    >>> state.on_start(total_rounds=3, initial_accuracy=0.1)
    >>> state.round_started(1, [1, 2], downlink_bytes={1: 100, 2: 100})
    >>> state.device_replied(1, 1, uplink_bytes=40)
    >>> state.device_replied(1, 2, uplink_bytes=0, error="ValueError: boom")
    >>> [event.kind for event in state.events_after(0)]
    [1, 2]
    >>> state.devices()[1].state
    <DeviceStatus.FAILED: 'failed'>

Stragglers and dropouts are counted as the run's summary counts them: the
round record's counts (the grid's), summed over the rounds. Which devices
they were comes from the grid where it says (``RoundTiming.straggler_ids``
and ``dropout_ids``), else from what the monitor saw where that is
unambiguous; a sampled device whose reply never came and that the grid
counted neither way is shown as ``no_reply``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from stamen.config import StamenConfig
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.server.control import RunControl, RunState
from stamen.server.monitor.devices import DeviceRecord, DeviceStatus, DeviceTable, RoundSeen
from stamen.server.reporting import RoundRecord

RUN_STATES = {state: getattr(pb, f"RUN_STATE_{state.name}") for state in RunState}
"""Python run states to their wire values."""


class MonitorState:
    """Thread-safe record of a federation for the monitor service.

    Args:
        config: the run's config (rounds, fleet size, shown in the status).
        control: the run's controls; the state listens to it and shows its settings.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        config: StamenConfig | None = None,
        control: RunControl | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self.config = config
        self.control = control
        self._events: list[Any] = []
        self._table = DeviceTable()
        self._rounds: dict[int, RoundSeen] = {}
        self.total_rounds = config.federation.rounds if config else 0
        self.round = 0
        self.last_record: RoundRecord | None = None
        self.state = control.state if control else RunState.STARTING
        self.state_message = ""
        self.started = clock()
        self.ended: float | None = None
        self.uplink_bytes = 0
        self.downlink_bytes = 0
        self.rejected_updates = 0
        self.stragglers = 0
        self.dropouts = 0
        self.summary: dict[str, Any] | None = None
        if control is not None:
            control.add_listener(self.on_state)
            from stamen.server.monitor.grid import ObservedGrid

            control.observe = lambda grid: ObservedGrid(grid, self)

    # -- RoundReporter ---------------------------------------------------------------

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """The run is about to start its first round."""
        with self._cond:
            self.total_rounds = total_rounds
            if self.control is None:
                self.state = RunState.RUNNING
            self._emit(
                kind=pb.EVENT_KIND_RUN_STARTED,
                accuracy=initial_accuracy,
                message=f"run started: {total_rounds} rounds",
            )

    def on_round(self, record: RoundRecord) -> None:
        """A round ended and was evaluated."""
        now = self._clock()
        with self._cond:
            seen = self._rounds.pop(record.round, None) or RoundSeen([])
            stragglers, dropouts = self._table.close_round(seen, record.stragglers, record.dropouts)
            self._cond.notify_all()
            for rejection in record.rejections:
                device = self._device(int(rejection["node_id"]))
                device.rejected += 1
                device.state = DeviceStatus.REJECTED
                device.last_error = str(rejection["reason"])
            self.round = max(self.round, record.round)
            self.last_record = record
            self.uplink_bytes += record.uplink_bytes
            self.downlink_bytes += record.downlink_bytes
            self.rejected_updates += record.rejected
            self.stragglers += record.stragglers
            self.dropouts += record.dropouts
            participants, _ = _ids_and_count(
                getattr(record, "participants", None), seen.participants
            )
            self._emit(
                time_unix=now,
                kind=pb.EVENT_KIND_ROUND_ENDED,
                round=record.round,
                participants=participants,
                stragglers=stragglers,
                num_stragglers=record.stragglers,
                dropouts=dropouts,
                num_dropouts=record.dropouts,
                accepted=record.accepted,
                rejections=[
                    pb.Rejection(node_id=int(r["node_id"]), reason=str(r["reason"]))
                    for r in record.rejections
                ],
                accuracy=record.accuracy,
                loss=record.loss,
                train_loss=record.train_loss,
                tier_accuracy=_floats(
                    getattr(record, "tier_accuracy", None)
                    or getattr(record, "accuracy_by_tier", None)
                ),
                uplink_bytes=record.uplink_bytes,
                downlink_bytes=record.downlink_bytes,
                uplink_bytes_fp32=record.uplink_bytes_fp32,
                downlink_bytes_fp32=record.downlink_bytes_fp32,
                uplink_compression=_ratio(record.uplink_bytes_fp32, record.uplink_bytes),
                downlink_compression=_ratio(record.downlink_bytes_fp32, record.downlink_bytes),
                duration_seconds=record.seconds,
                sparsity=record.sparsity,
                distillation=_floats(getattr(record, "distillation", None)),
                privacy=_floats({k: v for k, v in record.extra.items() if k in PRIVACY_KEYS}),
            )

    def on_finish(self, summary: dict[str, Any]) -> None:
        """The run ended and its summary was written."""
        with self._cond:
            self.summary = summary
            if self.control is None:
                state = RunState.STOPPED if summary.get("stopped") else RunState.FINISHED
                self._change_state(state, f"{state.value} after {summary.get('rounds')} rounds")

    # -- grid observations -------------------------------------------------------------

    def round_started(
        self,
        server_round: int,
        node_ids: Iterable[int],
        *,
        downlink_bytes: Mapping[int, int] | None = None,
        tiers: Mapping[int, str] | None = None,
    ) -> None:
        """The server sent round ``server_round``'s task to ``node_ids``."""
        with self._cond:
            nodes = sorted(int(n) for n in node_ids)
            seen = self._rounds.get(server_round)
            if seen is None:
                self._rounds[server_round] = RoundSeen(nodes)
            else:  # an asynchronous strategy dispatches one model version several times
                seen.participants = sorted({*seen.participants, *nodes})
            self.round = max(self.round, server_round)
            for node_id in nodes:
                device = self._device(node_id)
                device.state = DeviceStatus.TRAINING
                device.rounds += 1
                device.downlink_bytes += (downlink_bytes or {}).get(node_id, 0)
                if tiers and node_id in tiers:
                    device.tier = tiers[node_id]
            self._emit(kind=pb.EVENT_KIND_ROUND_STARTED, round=server_round, participants=nodes)

    def device_replied(
        self, server_round: int, node_id: int, *, uplink_bytes: int, error: str | None = None
    ) -> None:
        """A device answered round ``server_round`` (with an update, or an error).

        A reply seen twice (as it arrives, and again when the grid hands it back)
        counts once.
        """
        with self._cond:
            seen = self._rounds.get(server_round)
            if seen is not None:
                if node_id in seen.replied:
                    return
                seen.replied.add(node_id)
                if error:
                    seen.failed[node_id] = error
            device = self._device(node_id)
            device.last_seen = self._clock()
            device.uplink_bytes += uplink_bytes
            device.state = DeviceStatus.FAILED if error else DeviceStatus.IDLE
            if error:
                device.last_error = error

    def round_closed(
        self,
        server_round: int,
        *,
        stragglers: Sequence[int] | None = None,
        dropouts: Sequence[int] | None = None,
    ) -> None:
        """The grid closed round ``server_round``, and said which devices it counted how
        (``None``: it did not say)."""
        with self._cond:
            seen = self._rounds.get(server_round)
            if seen is not None:
                seen.closed = True
                seen.stragglers = None if stragglers is None else sorted(map(int, stragglers))
                seen.dropouts = None if dropouts is None else sorted(map(int, dropouts))

    # -- RunControl listener -------------------------------------------------------------

    def on_state(self, state: RunState, message: str) -> None:
        """The control changed state or a setting."""
        with self._cond:
            if state is self.state:
                self._emit(kind=pb.EVENT_KIND_SETTING_CHANGED, message=message)
            else:
                self._change_state(state, message)

    # -- reads ------------------------------------------------------------------------

    def events_after(self, sequence: int) -> list[Any]:
        """Every event numbered above ``sequence``."""
        with self._cond:
            return self._events[sequence:]

    def wait_for_events(self, sequence: int, timeout: float) -> list[Any]:
        """Events above ``sequence``, waiting up to ``timeout`` seconds for one."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._events) > sequence, timeout=timeout)
            return self._events[sequence:]

    def devices(self) -> list[DeviceRecord]:
        """Copies of every device record, by node id."""
        with self._cond:
            return self._table.all()

    @property
    def table_id(self) -> str:
        """The device table's id: a client holding another table needs a snapshot."""
        return self._table.table_id

    @property
    def device_version(self) -> int:
        """The device table's version: it goes up by one with every device change."""
        with self._cond:
            return self._table.version

    def device_changes(self, after_version: int) -> tuple[int, list[Any], int]:
        """The table's version, the devices changed after ``after_version`` (``Device``
        messages), and the table's size."""
        with self._cond:
            table = self._table
            return table.version, table.changes_after(after_version), len(table)

    def wait_for_device_changes(self, after_version: int, timeout: float) -> bool:
        """Whether the table changed after ``after_version``, waiting up to ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: self._table.version > after_version, timeout)

    def status(self) -> Any:
        """The run status as a ``RunStatus`` message (without the caller's role)."""
        control = self.control
        strategy = type(control.strategy).__name__ if control and control.strategy else ""
        devices_per_round = control.devices_per_round if control else None
        deadline = control.deadline if control else None
        with self._cond:
            config = self.config
            if devices_per_round is None and config is not None:
                devices_per_round = config.federation.devices_per_round
            record = self.last_record
            health, detail = self._health()
            status = pb.RunStatus(
                strategy=strategy,
                config_json=json.dumps(config.to_dict()) if config else "{}",
                round=self.round,
                total_rounds=self.total_rounds,
                state=RUN_STATES[self.state],
                health=health,
                health_detail=detail,
                started_unix=self.started,
                elapsed_seconds=(self.ended or self._clock()) - self.started,
                devices_per_round=devices_per_round or 0,
                num_devices=config.federation.num_devices if config else len(self._table),
                uplink_bytes=self.uplink_bytes,
                downlink_bytes=self.downlink_bytes,
                rejected_updates=self.rejected_updates,
                state_message=self.state_message,
                stragglers=self.stragglers,
                dropouts=self.dropouts,
            )
            if deadline is not None:
                status.deadline_seconds = deadline
            if record is not None:
                status.accuracy = record.accuracy
                status.loss = record.loss
            for event in reversed(self._events):
                if event.kind == pb.EVENT_KIND_ROUND_ENDED:
                    status.last_round.CopyFrom(event)
                    break
            return status

    # -- internals ----------------------------------------------------------------------

    def _health(self) -> tuple[pb.Health, str]:
        if self.state is RunState.FAILED:
            return pb.HEALTH_FAILED, self.state_message or "the run failed"
        record = self.last_record
        if record is not None and record.sampled and record.accepted == 0:
            return pb.HEALTH_DEGRADED, f"round {record.round}: no update was accepted"
        if record is not None and record.rejected:
            return pb.HEALTH_DEGRADED, f"round {record.round}: {record.rejected} updates rejected"
        if record is not None and (record.dropouts or record.stragglers):
            return pb.HEALTH_DEGRADED, (
                f"round {record.round}: {record.dropouts} dropouts, {record.stragglers} stragglers"
            )
        return pb.HEALTH_OK, ""

    def _change_state(self, state: RunState, message: str) -> None:
        self.state = state
        accuracy = None
        if state.ended:
            self.ended = self._clock()
            self._table.end_tasks()
            if self.last_record is not None:
                accuracy = self.last_record.accuracy
                message = f"{message} · final accuracy {100 * accuracy:.1f}%"
        self.state_message = message
        self._emit(kind=pb.EVENT_KIND_STATE_CHANGED, message=message, accuracy=accuracy)

    def _device(self, node_id: int) -> DeviceRecord:
        """``node_id``'s record, marked as changed (the lock is held)."""
        device = self._table.touch(node_id)
        self._cond.notify_all()
        return device

    def _emit(self, **fields: Any) -> None:
        """Append an event (the lock is held) and wake the subscribers."""
        fields.setdefault("time_unix", self._clock())
        fields.setdefault("round", self.round)
        fields = {k: v for k, v in fields.items() if v is not None}
        event = pb.RoundEvent(
            sequence=len(self._events) + 1,
            total_rounds=self.total_rounds,
            state=RUN_STATES[self.state],
            **fields,
        )
        self._events.append(event)
        self._cond.notify_all()


PRIVACY_KEYS = ("epsilon", "dp_delta", "noise_multiplier")
"""The round record's DP figures the console shows."""


def _ids_and_count(value: Any, observed: list[int]) -> tuple[list[int], int]:
    """Node ids and a count, from a record field (ids, a count, or absent) or what was seen."""
    if value is None:
        return observed, len(observed)
    if isinstance(value, int):
        if value == 0:
            # Grids without a clock report none; what the monitor saw is the better answer.
            return observed, len(observed)
        return (observed if len(observed) == value else []), value
    ids = [int(v) for v in value]
    return ids, len(ids)


def _floats(values: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (values or {}).items() if isinstance(v, int | float)}


def _ratio(dense: int, actual: int) -> float | None:
    return dense / actual if actual else None
