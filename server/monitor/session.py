"""Everything a monitored run needs, started and stopped together.

Examples:
    >>> from stamen.config import load_config
    >>> from stamen.server.monitor.auth import Role, TokenStore
    >>> config = load_config(overrides={"dataset": "digits", "model": "mlp", "rounds": 2,
    ...     "num-devices": 4, "devices-per-round": 2})
    >>> tokens = TokenStore({"operator-token-0001": Role.OPERATOR})
    >>> with MonitoredRun(config, MonitorSettings(tokens=tokens)) as run:
    ...     run.server.port > 0 and run.control.state.value
    'starting'
"""

from __future__ import annotations

import contextlib
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from stamen.config import StamenConfig
from stamen.core.errors import ConfigError
from stamen.server.control import ControlRefused, RunControl, RunState
from stamen.server.monitor.service import MonitorServer, MonitorSettings, start_monitor
from stamen.server.monitor.state import MonitorState

if TYPE_CHECKING:
    from stamen.server.monitor.metrics import MetricsServer


class Federation(Protocol):
    """How a monitored run is started: :func:`stamen.launch.simulate` has this shape."""

    def __call__(
        self, config: StamenConfig, reporter: MonitorState, *, control: RunControl
    ) -> dict[str, Any]: ...


class MonitoredRun:
    """A run's control, its monitor state, the gRPC service and the optional metrics endpoint.

    Pass :attr:`state` as a reporter and :attr:`control` to the federation
    (``simulate(config, run.state, control=run.control)``).
    """

    def __init__(
        self,
        config: StamenConfig,
        settings: MonitorSettings,
        *,
        metrics_port: int | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.metrics_port = metrics_port
        self.control = RunControl()
        self.state = MonitorState(config, self.control)
        self._server: MonitorServer | None = None
        self.metrics: MetricsServer | None = None
        self.thread: threading.Thread | None = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None

    @property
    def server(self) -> MonitorServer:
        """The running gRPC service."""
        if self._server is None:
            raise RuntimeError("the monitor is not running")
        return self._server

    def start(self) -> MonitoredRun:
        """Start serving."""
        self._server = start_monitor(self.settings, self.state, self.control)
        if self.metrics_port is not None:
            try:
                try:
                    from stamen.server.monitor.metrics import start_metrics
                except ImportError:
                    raise ConfigError(
                        "the metrics endpoint needs prometheus-client: "
                        "pip install 'stamen[console]'"
                    ) from None
                self.metrics = start_metrics(self.state, self.metrics_port, self.settings.host)
            except Exception:
                self.stop()
                raise
        return self

    def run_in_background(self, federation: Federation) -> threading.Thread:
        """Run ``federation`` on :attr:`config` in a thread (demos, tests, screenshots).

        ``federation`` is :func:`stamen.launch.simulate` or anything called like
        it. The summary lands in :attr:`summary`, an exception in :attr:`error`.
        """

        def target() -> None:
            try:
                self.summary = federation(self.config, self.state, control=self.control)
            except BaseException as error:  # kept for the caller, who joins the thread
                self.error = error

        self.thread = threading.Thread(target=target, name="federation", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Stop the endpoints (idempotent); a background run is stopped and joined.

        Consoles are told how the run ended before the service goes: a run that
        never said (it failed before its first round, or its thread was lost) is
        marked failed or stopped here. Called from a ``finally`` block while an
        exception propagates, that exception is the reason given.
        """
        if self.thread is not None:
            if not self.control.state.ended:
                with contextlib.suppress(ControlRefused):
                    self.control.stop()
            self.thread.join(timeout=120)
            self.thread = None
        if not self.control.state.ended:
            error = self.error or sys.exception()
            if error is None or isinstance(error, KeyboardInterrupt):
                self.control.finished(RunState.STOPPED, "the server stopped before the run ended")
            else:
                self.control.finished(RunState.FAILED, f"failed: {type(error).__name__}: {error}")
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MonitoredRun:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
