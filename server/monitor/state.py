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
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from stamen.config import StamenConfig
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.server.control import RunControl, RunState
from stamen.server.reporting import RoundRecord


class DeviceStatus(enum.StrEnum):
    """What a device did last, as the server saw it."""

    IDLE = "idle"
    TRAINING = "training"
    REJECTED = "rejected"
    FAILED = "failed"
    STRAGGLING = "straggling"


@dataclass
class DeviceRecord:
    """One device's history in this run."""

    node_id: int
    tier: str = ""
    state: DeviceStatus = DeviceStatus.IDLE
    last_seen: float = 0.0
    rounds: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    rejected: int = 0
    last_error: str = ""


@dataclass
class _RoundSeen:
    """What the grid showed of one round in flight."""

    participants: list[int]
    replied: set[int]
    failed: dict[int, str]


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
        self._devices: dict[int, DeviceRecord] = {}
        self._rounds: dict[int, _RoundSeen] = {}
        self.total_rounds = config.federation.rounds if config else 0
        self.round = 0
        self.last_record: RoundRecord | None = None
        self.state = control.state if control else RunState.STARTING
        self.started = clock()
        self.ended: float | None = None
        self.uplink_bytes = 0
        self.downlink_bytes = 0
        self.rejected_updates = 0
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
            seen = self._rounds.pop(record.round, None) or _RoundSeen([], set(), {})
            missing = [n for n in seen.participants if n not in seen.replied]
            stragglers, num_stragglers = _ids_and_count(
                getattr(record, "stragglers", None), missing
            )
            dropouts, num_dropouts = _ids_and_count(
                getattr(record, "dropouts", None), sorted(seen.failed)
            )
            for node_id in stragglers:
                self._device(node_id).state = DeviceStatus.STRAGGLING
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
            participants, _ = _ids_and_count(
                getattr(record, "participants", None), seen.participants
            )
            self._emit(
                time_unix=now,
                kind=pb.EVENT_KIND_ROUND_ENDED,
                round=record.round,
                participants=participants,
                stragglers=stragglers,
                num_stragglers=num_stragglers,
                dropouts=dropouts,
                num_dropouts=num_dropouts,
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
            self._rounds[server_round] = _RoundSeen(nodes, set(), {})
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
        """A device answered round ``server_round`` (with an update, or an error)."""
        with self._cond:
            device = self._device(node_id)
            device.last_seen = self._clock()
            device.uplink_bytes += uplink_bytes
            device.state = DeviceStatus.FAILED if error else DeviceStatus.IDLE
            if error:
                device.last_error = error
            seen = self._rounds.get(server_round)
            if seen is not None:
                seen.replied.add(node_id)
                if error:
                    seen.failed[node_id] = error

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
            return [replace(self._devices[n]) for n in sorted(self._devices)]

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
                num_devices=config.federation.num_devices if config else len(self._devices),
                uplink_bytes=self.uplink_bytes,
                downlink_bytes=self.downlink_bytes,
                rejected_updates=self.rejected_updates,
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
            return pb.HEALTH_FAILED, self._last_message() or "the run failed"
        record = self.last_record
        if record is not None and record.sampled and record.accepted == 0:
            return pb.HEALTH_DEGRADED, f"round {record.round}: no update was accepted"
        if record is not None and record.rejected:
            return pb.HEALTH_DEGRADED, f"round {record.round}: {record.rejected} updates rejected"
        ended = next(
            (e for e in reversed(self._events) if e.kind == pb.EVENT_KIND_ROUND_ENDED), None
        )
        if ended is not None and (ended.num_dropouts or ended.num_stragglers):
            return pb.HEALTH_DEGRADED, (
                f"round {ended.round}: {ended.num_dropouts} dropouts, "
                f"{ended.num_stragglers} stragglers"
            )
        return pb.HEALTH_OK, ""

    def _last_message(self) -> str:
        for event in reversed(self._events):
            if event.kind == pb.EVENT_KIND_STATE_CHANGED:
                return str(event.message)
        return ""

    def _change_state(self, state: RunState, message: str) -> None:
        self.state = state
        if state.ended:
            self.ended = self._clock()
        self._emit(kind=pb.EVENT_KIND_STATE_CHANGED, message=message)

    def _device(self, node_id: int) -> DeviceRecord:
        device = self._devices.get(node_id)
        if device is None:
            device = self._devices[node_id] = DeviceRecord(node_id)
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


def _ids(values: Any) -> list[int]:
    return [int(v) for v in values]


def _ids_and_count(value: Any, observed: list[int]) -> tuple[list[int], int]:
    """Node ids and a count, from a record field (ids, a count, or absent) or what was seen."""
    if value is None:
        return observed, len(observed)
    if isinstance(value, int):
        if value == 0:
            # Grids without a clock report none; what the monitor saw is the better answer.
            return observed, len(observed)
        return (observed if len(observed) == value else []), value
    ids = _ids(value)
    return ids, len(ids)


def _floats(values: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (values or {}).items() if isinstance(v, int | float)}


def _ratio(dense: int, actual: int) -> float | None:
    return dense / actual if actual else None
