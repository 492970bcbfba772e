"""The console's widgets: a chart with its label, the paged device table, the stop dialog."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Sparkline

from stamen.console.devices import DEVICE_COLUMNS, DevicePages
from stamen.console.view import device_row


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
    """One page of the device table: only the rows on screen exist as rows.

    The devices themselves live in :attr:`pages` (:class:`DevicePages`).
    ``o`` or a click on a column header sorts, PgUp/PgDn, Home/End and the
    arrows move through the pages, and :meth:`show_page` redraws after a change.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("o", "cycle_sort", "Sort")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.pages = DevicePages()

    @property
    def sort_column(self) -> str:
        """The column the rows are sorted by."""
        return self.pages.sort_column

    def on_mount(self) -> None:
        """Add the columns."""
        for column in DEVICE_COLUMNS:
            self.add_column(column, key=column)

    def on_resize(self) -> None:
        """Fit the page to the rows on screen."""
        self.show_page()

    def show_page(self) -> None:
        """Redraw the page from :attr:`pages` (after new data, a sort, a filter or a move)."""
        pages = self.pages
        header = self.header_height if self.show_header else 0
        pages.resize(self.scrollable_content_region.height - header)
        cursor = self.cursor_row
        self.clear()
        now = time.time()
        for device in pages.page():
            self.add_row(*device_row(device, now), key=str(device.node_id))
        if self.row_count:
            self.move_cursor(row=min(max(cursor, 0), self.row_count - 1), scroll=False)
        self.border_title = self.caption()

    def caption(self) -> str:
        """Rows on screen, devices passing the filter, the filter and the sort."""
        pages = self.pages
        first, last, shown = pages.position()
        arrow = "▼" if pages.sort_reverse else "▲"
        where = f"{first}-{last} of {shown:,}"
        if pages.filter:
            where += f" ({pages.filter.describe()}; {len(pages.devices):,} in all)"
        return f"{where} · by {pages.sort_column} {arrow}"

    def sort_by(self, column: str) -> None:
        """Sort by ``column``; the same column again flips the order."""
        self.pages.sort_by(column)
        self.show_page()

    def action_cycle_sort(self) -> None:
        """Sort by the next column."""
        self.pages.next_sort()
        self.show_page()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a header sorts by that column."""
        self.sort_by(str(event.column_key.value))

    # -- moving through the pages (DataTable's own actions, for its own keys) ------------

    def _move(self, change: Callable[[], None], cursor: int | None = None) -> None:
        change()
        self.show_page()
        if cursor is not None and self.row_count:
            self.move_cursor(row=cursor, scroll=False)

    def action_page_down(self) -> None:
        """The next page."""
        self._move(self.pages.page_down)

    def action_page_up(self) -> None:
        """The previous page."""
        self._move(self.pages.page_up)

    def action_scroll_home(self) -> None:
        """The first page, at its first row."""
        self._move(self.pages.home, cursor=0)

    def action_scroll_end(self) -> None:
        """The last page, at its last row."""
        self._move(self.pages.end, cursor=self.pages.page_size - 1)

    action_scroll_top = action_scroll_home
    action_scroll_bottom = action_scroll_end

    def action_cursor_down(self) -> None:
        """The next row; past the page's last row, the page moves by one."""
        if self.cursor_row < self.row_count - 1:
            super().action_cursor_down()
        else:
            self._move(lambda: self.pages.scroll(1))

    def action_cursor_up(self) -> None:
        """The previous row; above the page's first row, the page moves by one."""
        if self.cursor_row > 0:
            super().action_cursor_up()
        else:
            self._move(lambda: self.pages.scroll(-1))

    def _on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        event.prevent_default()
        self._move(lambda: self.pages.scroll(3))

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        event.prevent_default()
        self._move(lambda: self.pages.scroll(-3))


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
