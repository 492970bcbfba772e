"""The console's small widgets: a chart with its label, the device table, the stop dialog."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Sparkline

from stamen.console.view import DEVICE_COLUMNS, device_row, device_sort_key


class Chart(Vertical):
    """A one-line caption over a sparkline of per-round values."""

    DEFAULT_CSS = """
    Chart { height: 3; width: 1fr; padding: 0 1; }
    Chart > Label { width: 1fr; color: $text-muted; }
    Chart > Sparkline { height: 2; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        # Made here, so that data arriving before the chart is mounted is kept.
        self.caption = Label(f"{title} -")
        self.sparkline = Sparkline([])

    def compose(self) -> ComposeResult:
        yield self.caption
        yield self.sparkline

    def show(self, values: list[float], latest: str) -> None:
        """Plot ``values``; the caption shows ``latest``."""
        self.caption.update(f"{self.title} {latest}")
        self.sparkline.data = list(values)


class DeviceTable(DataTable[str]):
    """Every device; ``o`` or a click on a column header changes the sort."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("o", "cycle_sort", "Sort")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.sort_column = "node"
        self.sort_reverse = False
        self.devices: list[Any] = []

    def on_mount(self) -> None:
        """Add the columns."""
        for column in DEVICE_COLUMNS:
            self.add_column(column, key=column)

    def show(self, devices: list[Any]) -> None:
        """Replace the rows with ``devices``, sorted."""
        self.devices = list(devices)
        ordered = sorted(
            self.devices, key=device_sort_key(self.sort_column), reverse=self.sort_reverse
        )
        self.clear()
        for device in ordered:
            self.add_row(*device_row(device), key=str(device.node_id))
        arrow = "▼" if self.sort_reverse else "▲"
        self.border_subtitle = f"{len(ordered)} devices · sorted by {self.sort_column} {arrow}"

    def sort_by(self, column: str) -> None:
        """Sort by ``column``; the same column again flips the order."""
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, column not in ("node", "tier", "state")
        self.show(self.devices)

    def action_cycle_sort(self) -> None:
        """Sort by the next column."""
        index = DEVICE_COLUMNS.index(self.sort_column)
        self.sort_by(DEVICE_COLUMNS[(index + 1) % len(DEVICE_COLUMNS)])

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a header sorts by that column."""
        self.sort_by(str(event.column_key.value))


class ConfirmStop(ModalScreen[bool]):
    """Asks before stopping the run."""

    DEFAULT_CSS = """
    ConfirmStop { align: center middle; }
    ConfirmStop > Grid {
        grid-size: 2; grid-gutter: 1 2; grid-rows: auto 3;
        width: 56; height: auto; padding: 1 2; border: thick $error; background: $surface;
    }
    ConfirmStop Label { column-span: 2; width: 1fr; }
    ConfirmStop Button { width: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Stop the run"),
        Binding("n,escape", "answer(False)", "Keep running"),
    ]

    def compose(self) -> ComposeResult:
        with Grid():
            yield Label(
                "Stop the run after the current round? The results so far are written. (y/n)"
            )
            yield Button("Stop (y)", variant="error", id="yes")
            yield Button("Keep running (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button."""
        self.dismiss(event.button.id == "yes")

    def action_answer(self, stop: bool) -> None:
        """Answer with a key."""
        self.dismiss(stop)
