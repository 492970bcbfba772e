"""``stamen console``: a Textual app that watches and steers a live federation.

Three threads follow the monitor: the round-event stream (the history first,
so a console attached mid-run sees every past round), the device-table stream
(a snapshot, then only the devices that changed) and a status poll. They
reconnect while the server is away, with one log line when the connection is
lost and one when it is back; the header counts the attempts. Once the run has
ended and the monitor has closed, the console keeps the final picture and
stops reconnecting.

Keys: ``p`` pause, ``r`` resume, ``s`` stop (asks first), ``+``/``-`` devices
per round, ``o`` sort the devices, ``/`` filter them, PgUp/PgDn/Home/End page
through them, ``q`` quit. Refusals (a wrong token, a read-only token using a
control) are shown in plain words in the header and the log.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Input, RichLog, Static
from textual.worker import get_current_worker

from stamen.console.client import ConnectionSettings, MonitorClient, MonitorError
from stamen.console.devices import DeviceFilter
from stamen.console.view import (
    END_STYLES,
    RunView,
    connection_line,
    header_markup,
    header_text,
    human_bytes,
)
from stamen.console.widgets import Chart, ConfirmStop, DeviceTable
from stamen.protos.monitor.v1 import monitor_pb2 as pb

CONTROL_NAMES = {
    pb.CONTROL_ACTION_PAUSE: "pause",
    pb.CONTROL_ACTION_RESUME: "resume",
    pb.CONTROL_ACTION_STOP: "stop",
    pb.CONTROL_ACTION_SET_DEVICES_PER_ROUND: "devices per round",
}


class ConsoleApp(App[None]):
    """The operator console for one monitor endpoint."""

    TITLE = "Stamen console"
    CSS = """
    Screen { layout: vertical; }
    #header { height: 2; padding: 0 1; background: $boost; }
    #charts { height: 3; }
    #devices { height: 1fr; min-height: 4; border-top: solid $primary; }
    #log { height: 7; border-top: solid $primary; }
    #filter { dock: bottom; height: 1; border: none; padding: 0 1; display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("plus,=", "devices(1)", "+dev", key_display="+"),
        Binding("minus", "devices(-1)", "-dev", key_display="-"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        poll_interval: float = 1.0,
        reconnect_delay: float = 1.0,
        device_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.poll_interval = poll_interval
        self.reconnect_delay = reconnect_delay
        self.device_interval = device_interval
        self.view = RunView()
        self.status: Any = None
        self.connection = "connecting"
        self.problem = ""
        self.refused = False
        self.attempts = 0
        """Failed reconnection attempts since the connection was lost."""
        self.log_lines: list[str] = []
        self._shutting_down = threading.Event()
        self._stream_clients: dict[str, MonitorClient] = {}
        self._client = MonitorClient(settings)

    # -- layout ---------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Kept by reference: queries go to the active screen, which may be the stop dialog.
        self.header = Static(id="header")
        self.charts = {
            "accuracy": Chart("accuracy", id="accuracy"),
            "loss": Chart("loss", id="loss"),
            "uplink": Chart("uplink/round", id="uplink"),
        }
        self.table = DeviceTable(id="devices")
        self.event_log = RichLog(id="log", max_lines=1000, wrap=True)
        self.event_log.can_focus = False
        self.filter_input = Input(
            placeholder="filter: state:NAME tier:NAME or id digits (Enter applies, Esc closes)",
            id="filter",
        )
        yield self.header
        with Horizontal(id="charts"):
            yield from self.charts.values()
        yield self.table
        yield self.event_log
        yield self.filter_input
        yield Footer()

    def on_mount(self) -> None:
        """Start following the server."""
        self._render_header()
        self.table.focus()
        self.follow_events()
        self.follow_devices()
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    def on_unmount(self) -> None:
        """Stop the threads: closing the channels ends a blocked stream."""
        self._shutting_down.set()
        for client in list(self._stream_clients.values()):
            client.close()
        self._client.close()

    @property
    def following(self) -> bool:
        """Whether the threads should keep talking to the server."""
        return not (self._shutting_down.is_set() or self.refused or self.connection == "closed")

    # -- the streams --------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="events")
    def follow_events(self) -> None:
        """Follow the round events, reconnecting while the server is away."""
        worker = get_current_worker()
        while not worker.is_cancelled and self.following:
            client = self._stream_clients["events"] = MonitorClient(self.settings)
            try:
                first = True
                for event in client.watch(0):
                    if not self.following:
                        return
                    if first:
                        # The server replays the whole history: the view starts afresh.
                        self.call_from_thread(self._stream_opened)
                        first = False
                    self.call_from_thread(self._on_event, event)
                if self.following:
                    self.call_from_thread(self._lost, "the monitor closed the stream")
            except MonitorError as error:
                if not self._shutting_down.is_set():
                    self.call_from_thread(self._failed, error, True)
            finally:
                client.close()
            self._shutting_down.wait(self.reconnect_delay)

    @work(thread=True, exclusive=True, group="devices")
    def follow_devices(self) -> None:
        """Follow the device table: a snapshot, then only the devices that change.

        After a reconnect to the same server's table, the first message holds
        only what changed since the version the console has.
        """
        worker = get_current_worker()
        pages = self.table.pages
        while not worker.is_cancelled and self.following:
            client = self._stream_clients["devices"] = MonitorClient(self.settings)
            try:
                changes_stream = client.watch_devices(
                    pages.table_id, pages.version, interval=self.device_interval
                )
                for changes in changes_stream:
                    # The last message may come as the monitor closes: it is kept.
                    if self._shutting_down.is_set():
                        return
                    self.call_from_thread(self._devices_changed, changes)
            except MonitorError as error:
                if not self._shutting_down.is_set():
                    self.call_from_thread(self._failed, error, False)
            finally:
                client.close()
            self._shutting_down.wait(self.reconnect_delay)

    def _stream_opened(self) -> None:
        reconnected = self.view.last_sequence > 0
        self.view.reset()
        self.log_lines.clear()
        self.event_log.clear()
        if reconnected:
            self.write_log("reconnected; the history follows", "green")
        self._connected()

    def _on_event(self, event: Any) -> None:
        self._connected()
        lines = self.view.apply(event)
        # The run's end, in one line that stands out.
        style = END_STYLES.get(self.view.state, "") if self.view.ended else ""
        for line in lines:
            self.write_log(line, style if event.kind == pb.EVENT_KIND_STATE_CHANGED else "")
        if event.kind == pb.EVENT_KIND_ROUND_ENDED:
            self._render_charts()
        self._render_header()

    def _devices_changed(self, changes: Any) -> None:
        self.table.pages.apply(changes)
        self.table.show_page()

    # -- the connection -----------------------------------------------------------------

    def _connected(self) -> None:
        if self.connection in ("connecting", "reconnecting") and not self.refused:
            self.connection, self.problem, self.attempts = "connected", "", 0
            self._render_header()

    def _failed(self, error: MonitorError, from_events: bool) -> None:
        """A call failed: a refusal stops everything; the event stream speaks for the link.

        The device stream and the status poll fail along with the event stream when
        the server is away; only the event stream's failures are logged and counted.
        """
        if error.refused:
            self._refuse(str(error))
        elif from_events:
            self._lost(str(error))

    def _lost(self, reason: str) -> None:
        """The event stream failed or ended: the connection is lost, or the run is over."""
        if not self.following:
            return
        if self.view.ended:
            # The run is over and its monitor has gone with it: nothing to reconnect to.
            self.connection, self.problem = "closed", ""
            self._render_header()
            return
        if self.connection != "reconnecting":
            self.write_log(f"connection lost: {reason}; reconnecting", "yellow")
            self.connection = "reconnecting"
        else:
            self.attempts += 1
        self.problem = reason
        self._render_header()

    def _refuse(self, reason: str) -> None:
        if not self.refused:
            self.write_log(reason, "bold red")
        self.refused, self.connection, self.problem = True, "refused", reason
        self._render_header()

    # -- polling ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        """Fetch the status."""
        if not self.following:
            return
        try:
            status = self._client.status()
        except MonitorError as error:
            if not self._shutting_down.is_set():
                self.call_from_thread(self._failed, error, False)
            return
        if not self._shutting_down.is_set():
            self.call_from_thread(self._polled, status)

    def _polled(self, status: Any) -> None:
        self._connected()
        self.status = status
        self.table.show_page()  # "seen … ago" moves on
        self._render_header()

    # -- rendering ----------------------------------------------------------------------

    def write_log(self, line: str, style: str = "") -> None:
        """Add a line to the event log (kept as plain text in :attr:`log_lines` too)."""
        self.log_lines.append(line)
        self.event_log.write(Text(line, style=style))

    def header_lines(self) -> tuple[str, str]:
        """The two header lines, as plain text (markup-free, for tests and the screen)."""
        view = self.view
        if self.status is not None:
            first = header_text(self.status, view)
        elif view.total_rounds:
            first = f"round {view.round}/{view.total_rounds} · {view.state}"
        else:
            first = "waiting for the server"
        detail = self.status.health_detail if self.status is not None else ""
        second = connection_line(
            self.settings.server, self.connection, self.problem, self.attempts, view, detail
        )
        return first, second

    def _render_header(self) -> None:
        first, second = self.header_lines()
        alarm = self.refused or (self.view.ended and self.view.state == "failed")
        self.header.update(header_markup(first, second, alarm=alarm, problem=bool(self.problem)))

    def _render_charts(self) -> None:
        view = self.view
        self.charts["accuracy"].show(
            view.accuracy, f"{view.accuracy[-1]:.1f}%" if view.accuracy else "-"
        )
        self.charts["loss"].show(view.loss, f"{view.loss[-1]:.3f}" if view.loss else "-")
        self.charts["uplink"].show(
            view.uplink, human_bytes(view.uplink[-1]) if view.uplink else "-"
        )

    # -- the device filter ----------------------------------------------------------------

    def action_filter(self) -> None:
        """Open the filter line (Enter applies, Escape closes; an empty filter shows all)."""
        self.filter_input.value = self.table.pages.filter.describe()
        self.filter_input.display = True
        self.filter_input.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Apply the filter."""
        self.table.pages.set_filter(DeviceFilter.parse(event.value))
        self.table.show_page()
        self._close_filter()

    def on_key(self, event: Any) -> None:
        """Escape closes the filter line."""
        if event.key == "escape" and self.filter_input.display:
            event.stop()
            self._close_filter()

    def _close_filter(self) -> None:
        self.filter_input.display = False
        self.table.focus()

    # -- controls -----------------------------------------------------------------------

    def action_pause(self) -> None:
        """Pause after the current round."""
        self.send_control(pb.CONTROL_ACTION_PAUSE)

    def action_resume(self) -> None:
        """Resume a paused run."""
        self.send_control(pb.CONTROL_ACTION_RESUME)

    def action_stop(self) -> None:
        """Ask, then stop the run cleanly."""

        def answered(stop: bool | None) -> None:
            if stop:
                self.send_control(pb.CONTROL_ACTION_STOP)
            else:
                self.write_log("stop cancelled")

        self.push_screen(ConfirmStop(), answered)

    def action_devices(self, change: int) -> None:
        """Sample more or fewer devices from the next round on."""
        current = self.status.devices_per_round if self.status is not None else 0
        if current + change < 1:
            self.write_log("devices per round cannot go below 1", "yellow")
            return
        self.send_control(pb.CONTROL_ACTION_SET_DEVICES_PER_ROUND, current + change)

    @work(thread=True, group="control")
    def send_control(self, action: pb.ControlAction, devices_per_round: int = 0) -> None:
        """Send a control request and log the answer."""
        try:
            reply = self._client.control(action, devices_per_round=devices_per_round)
        except MonitorError as error:
            self.call_from_thread(self._control_failed, CONTROL_NAMES[action], str(error))
            return
        self.call_from_thread(self._control_done, reply)

    def _control_done(self, reply: Any) -> None:
        self.status = reply.status
        self._render_header()
        # A change reaches the log as the server's event; an answer that changed
        # nothing ("already paused") has no event, so it is logged here (no toast:
        # toasts would cover the log).
        self.set_timer(1.0, lambda: self._log_unless_shown(str(reply.message)))

    def _log_unless_shown(self, message: str) -> None:
        if message and message not in self.log_lines[-20:]:
            self.write_log(message, "dim")

    def _control_failed(self, name: str, reason: str) -> None:
        self.write_log(f"{name} refused: {reason}", "bold red")
