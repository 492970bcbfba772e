"""Steer a running federation between rounds: pause, resume, stop, change settings.

The federation consults a :class:`RunControl` after each round has been
evaluated and reported. A pause takes effect there (the round in flight always
finishes), a stop ends the run there with its results written, and a new
devices-per-round or deadline applies from the next round on. Any thread may
call the control methods; the federation's own thread blocks while paused.

Examples:
    >>> control = RunControl()
    >>> control.pause()
    'pausing after the current round'
    >>> control.state
    <RunState.PAUSING: 'pausing'>
    >>> control.resume()
    'resumed'
    >>> control.stop()
    'stopping after the current round'
    >>> control.between_rounds(1)
    Traceback (most recent call last):
    ...
    stamen.server.control.StopRequested: stopped by an operator after round 1
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Any

from flwr.serverapp import Grid

from stamen.core.errors import StamenError

StateListener = Callable[["RunState", str], None]
"""Called with the new state and a sentence about the change."""


class RunState(enum.StrEnum):
    """Where a run is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        """Whether the run is over."""
        return self in (RunState.FINISHED, RunState.STOPPED, RunState.FAILED)


class StopRequested(Exception):
    """Raised between rounds when an operator stopped the run."""


class ControlRefused(StamenError, ValueError):
    """A control request that the run cannot honour (bad value, run over, unsupported)."""


DEADLINE_ATTRIBUTE = "deadline"
"""The strategy attribute a deadline change sets, for strategies that have one."""


class RunControl:
    """Thread-safe controls that a federation checks between rounds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state = RunState.STARTING
        self._pause = False
        self._stop = False
        self._devices_per_round: int | None = None
        self._deadline: float | None = None
        self._listeners: list[StateListener] = []
        self._pending: list[tuple[RunState, str]] = []
        self.strategy: Any = None
        self.num_devices: int | None = None
        self.observe: Callable[[Grid], Grid] | None = None
        """Optional wrapper for the federation's grid (see :meth:`bind`)."""

    # -- what the monitor reads ----------------------------------------------------

    @property
    def state(self) -> RunState:
        """The current state."""
        with self._cond:
            return self._state

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener`` on every state or setting change."""
        with self._cond:
            self._listeners.append(listener)

    @property
    def devices_per_round(self) -> int | None:
        """The devices sampled per round from the next round on (``None``: unknown yet)."""
        with self._cond:
            if self._devices_per_round is not None:
                return self._devices_per_round
        return getattr(self.strategy, "devices_per_round", None)

    @property
    def deadline(self) -> float | None:
        """The per-round deadline in seconds, where the strategy has one."""
        with self._cond:
            if self._deadline is not None:
                return self._deadline
        value = getattr(self.strategy, DEADLINE_ATTRIBUTE, None)
        return float(value) if isinstance(value, int | float) else None

    # -- operator actions ----------------------------------------------------------

    def pause(self) -> str:
        """Pause after the round in flight."""
        with self._cond:
            self._require_live("pause")
            if self._pause:
                return "already paused" if self._state is RunState.PAUSED else "already pausing"
            self._pause = True
            message = self._set(RunState.PAUSING, "pausing after the current round")
        self._flush()
        return message

    def resume(self) -> str:
        """Undo a pause, whether it has taken effect yet or not."""
        with self._cond:
            self._require_live("resume")
            if not self._pause:
                return "not paused"
            self._pause = False
            self._cond.notify_all()
            message = self._set(RunState.RUNNING, "resumed")
        self._flush()
        return message

    def stop(self) -> str:
        """End the run cleanly after the round in flight (results are written)."""
        with self._cond:
            self._require_live("stop")
            self._stop = True
            self._cond.notify_all()
            message = self._set(RunState.STOPPING, "stopping after the current round")
        self._flush()
        return message

    def set_devices_per_round(self, count: int) -> str:
        """Sample ``count`` devices per round from the next round on."""
        with self._cond:
            self._require_live("change devices per round")
            if count < 1:
                raise ControlRefused(f"devices per round must be >= 1; got {count}")
            if self.num_devices is not None and count > self.num_devices:
                raise ControlRefused(
                    f"devices per round must be <= the fleet size {self.num_devices}; got {count}"
                )
            self._devices_per_round = count
            message = f"devices per round set to {count} from the next round"
            self._notify(self._state, message)
        self._flush()
        return message

    def set_deadline(self, seconds: float) -> str:
        """Give each round ``seconds`` from the next round on, where the strategy has a deadline."""
        with self._cond:
            self._require_live("change the deadline")
            if not seconds > 0:
                raise ControlRefused(f"the deadline must be > 0 seconds; got {seconds}")
            if self.strategy is not None and not hasattr(self.strategy, DEADLINE_ATTRIBUTE):
                raise ControlRefused(
                    f"{type(self.strategy).__name__} has no round deadline to change"
                )
            self._deadline = float(seconds)
            message = f"round deadline set to {seconds:g} s from the next round"
            self._notify(self._state, message)
        self._flush()
        return message

    # -- what the federation calls -------------------------------------------------

    def bind(self, strategy: Any, grid: Grid, num_devices: int | None = None) -> Grid:
        """Attach the strategy whose settings the controls change; the run is now running.

        Returns the grid the federation should use: ``grid`` itself, or the
        :attr:`observe` wrapper around it (a monitor watching each round's messages).
        """
        with self._cond:
            self.strategy = strategy
            self.num_devices = num_devices
            if self._state is RunState.STARTING:
                self._set(RunState.RUNNING, "running")
        self._flush()
        return self.observe(grid) if self.observe is not None else grid

    def between_rounds(self, server_round: int) -> None:
        """Apply new settings; block while paused; raise :class:`StopRequested` on a stop."""
        with self._cond:
            self._apply()
            pausing = self._pause and not self._stop
            if pausing:
                self._set(RunState.PAUSED, f"paused after round {server_round}")
        self._flush()
        if pausing:
            with self._cond:
                while self._pause and not self._stop:
                    # A timeout keeps Ctrl-C deliverable on the main thread.
                    self._cond.wait(timeout=0.5)
                self._apply()
        if self._stop:
            raise StopRequested(f"stopped by an operator after round {server_round}")

    def finished(self, state: RunState, message: str) -> None:
        """The run ended: ``state`` is FINISHED, STOPPED or FAILED."""
        with self._cond:
            self._pause = False
            self._set(state, message)
        self._flush()

    # -- internals -------------------------------------------------------------------

    def _apply(self) -> None:
        if self.strategy is None:
            return
        settings: dict[str, Any] = {}
        if self._devices_per_round is not None:
            settings["devices_per_round"] = self._devices_per_round
        if self._deadline is not None:
            settings["deadline"] = self._deadline
        apply_settings(self.strategy, settings)

    def _require_live(self, action: str) -> None:
        if self._state.ended:
            raise ControlRefused(f"cannot {action}: the run has {self._state.value}")
        if self._stop:
            raise ControlRefused(f"cannot {action}: the run is stopping")

    def _set(self, state: RunState, message: str) -> str:
        self._state = state
        self._notify(state, message)
        return message

    def _notify(self, state: RunState, message: str) -> None:
        self._pending.append((state, message))

    def _flush(self) -> None:
        """Tell the listeners, outside the lock, so that they may read this control."""
        with self._cond:
            pending, self._pending = self._pending, []
            listeners = list(self._listeners)
        for state, message in pending:
            for listener in listeners:
                listener(state, message)


def apply_settings(strategy: Any, settings: dict[str, Any]) -> None:
    """Put operator settings (``devices_per_round``, ``deadline``) into ``strategy``."""
    if "devices_per_round" in settings:
        strategy.devices_per_round = int(settings["devices_per_round"])
    if "deadline" in settings and hasattr(strategy, DEADLINE_ATTRIBUTE):
        setattr(strategy, DEADLINE_ATTRIBUTE, settings["deadline"])


def operator_settings(
    strategy: Any, devices_per_round: int, deadline: float | None
) -> dict[str, Any]:
    """The settings an operator changed during the run: where ``strategy`` differs from the config.

    A checkpoint carries them, so a restarted server goes on with what the operator chose.

    Examples:
        >>> from types import SimpleNamespace
        >>> operator_settings(SimpleNamespace(devices_per_round=4, deadline=None), 10, None)
        {'devices_per_round': 4}
    """
    settings: dict[str, Any] = {}
    if strategy.devices_per_round != devices_per_round:
        settings["devices_per_round"] = strategy.devices_per_round
    current = getattr(strategy, DEADLINE_ATTRIBUTE, deadline)
    if current != deadline:
        settings["deadline"] = current
    return settings
