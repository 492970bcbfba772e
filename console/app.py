"""``stamen console``: a Textual app that watches and steers a live federation.

A thread follows the monitor's round-event stream (the history first, so a
console attached mid-run sees every past round) and reconnects when the server
goes away; another polls the status and the device list. Keys: ``p`` pause,
``r`` resume, ``s`` stop (asks first), ``+``/``-`` devices per round, ``o``
sort the devices, ``q`` quit. Refusals (a wrong token, a read-only token using
a control) are shown in plain words in the header and the log.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, RichLog, Static
from textual.worker import get_current_worker

from stamen.console.client import ConnectionSettings, MonitorClient, MonitorError
from stamen.console.view import RunView, header_text, human_bytes
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
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("plus,=", "devices(1)", "+dev", key_display="+"),
        Binding("minus", "devices(-1)", "-dev", key_display="-"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        poll_interval: float = 1.0,
        reconnect_delay: float = 1.0,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.poll_interval = poll_interval
        self.reconnect_delay = reconnect_delay
        self.view = RunView()
        self.status: Any = None
        self.connection = "connecting"
        self.problem = ""
        self.refused = False
        self.log_lines: list[str] = []
        self._shutting_down = threading.Event()
        self._stream_client: MonitorClient | None = None
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
        yield self.header
        with Horizontal(id="charts"):
            yield from self.charts.values()
        yield self.table
        yield self.event_log
        yield Footer()

    def on_mount(self) -> None:
        """Start following the server."""
        self._render_header()
        self.follow_events()
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    def on_unmount(self) -> None:
        """Stop the threads: closing the channels ends a blocked stream."""
        self._shutting_down.set()
        if self._stream_client is not None:
            self._stream_client.close()
        self._client.close()

    # -- the event stream ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="events")
    def follow_events(self) -> None:
        """Follow the round events, reconnecting while the server is away."""
        worker = get_current_worker()
        while not worker.is_cancelled and not self._shutting_down.is_set():
            client = self._stream_client = MonitorClient(self.settings)
            try:
                first = True
                for event in client.watch(0):
                    if self._shutting_down.is_set():
                        return
                    if first:
                        # The server replays the whole history: the view starts afresh.
                        self.call_from_thread(self._stream_opened)
                        first = False
                    self.call_from_thread(self._on_event, event)
                if not self._shutting_down.is_set():
                    self.call_from_thread(self._lost, "the monitor closed the stream")
            except MonitorError as error:
                if self._shutting_down.is_set():
                    return
                if error.refused:
                    self.call_from_thread(self._refuse, str(error))
                    return
                self.call_from_thread(self._lost, str(error))
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

    def _on_event(self, event: Any) -> None:
        if self.connection != "connected":
            self.connection, self.problem = "connected", ""
        for line in self.view.apply(event):
            self.write_log(line)
        if event.kind == pb.EVENT_KIND_ROUND_ENDED:
            self._render_charts()
        self._render_header()

    def _lost(self, reason: str) -> None:
        if self.connection != "reconnecting":
            self.write_log(f"connection lost: {reason}; reconnecting", "yellow")
        self.connection, self.problem = "reconnecting", reason
        self._render_header()

    def _refuse(self, reason: str) -> None:
        if not self.refused:
            self.write_log(reason, "bold red")
        self.refused, self.connection, self.problem = True, "refused", reason
        self._render_header()

    # -- polling ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        """Fetch the status and the devices."""
        if self.refused or self._shutting_down.is_set():
            return
        try:
            status = self._client.status()
            devices = self._client.devices()
        except MonitorError as error:
            if not self._shutting_down.is_set():
                self.call_from_thread(self._refuse if error.refused else self._lost, str(error))
            return
        if not self._shutting_down.is_set():
            self.call_from_thread(self._polled, status, devices)

    def _polled(self, status: Any, devices: list[Any]) -> None:
        if self.connection != "connected" and not self.refused:
            self.connection, self.problem = "connected", ""
        self.status = status
        self.table.show(devices)
        self._render_header()

    # -- rendering ----------------------------------------------------------------------

    def write_log(self, line: str, style: str = "") -> None:
        """Add a line to the event log (kept as plain text in :attr:`log_lines` too)."""
        self.log_lines.append(line)
        self.event_log.write(Text(line, style=style))

    def header_lines(self) -> tuple[str, str]:
        """The two header lines, as plain text (markup-free, for tests and the screen)."""
        if self.status is not None:
            first = header_text(self.status, self.view)
        elif self.view.total_rounds:
            first = f"round {self.view.round}/{self.view.total_rounds} · {self.view.state}"
        else:
            first = "waiting for the server"
        if self.problem:
            second = f"{self.connection}: {self.problem}"
        else:
            health = ""
            if self.status is not None and self.status.health_detail:
                health = f" · {self.status.health_detail}"
            second = f"{self.settings.server} · {self.connection}{health}"
        return first, second

    def _render_header(self) -> None:
        first, second = self.header_lines()
        style = "bold red" if self.refused else ("yellow" if self.problem else "dim")
        self.header.update(f"[bold]Stamen[/] · {_escape(first)}\n[{style}]{_escape(second)}[/]")

    def _render_charts(self) -> None:
        view = self.view
        self.charts["accuracy"].show(
            view.accuracy, f"{view.accuracy[-1]:.1f}%" if view.accuracy else "-"
        )
        self.charts["loss"].show(view.loss, f"{view.loss[-1]:.3f}" if view.loss else "-")
        self.charts["uplink"].show(
            view.uplink, human_bytes(view.uplink[-1]) if view.uplink else "-"
        )

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
        self.notify(reply.message, title="server")
        self.status = reply.status
        self._render_header()

    def _control_failed(self, name: str, reason: str) -> None:
        self.write_log(f"{name} refused: {reason}", "bold red")
        self.notify(reason, title=f"{name} refused", severity="error")


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
