"""The screen half of ``console_scale.py``: the real console driven headless at 80x24
against a monitor in a process of its own, a DataTable holding every row (the console
before), and an empty console's first paint."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from console_fleet import console_timings, populate
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from stamen.console import ConnectionSettings, ConsoleApp
from stamen.console.devices import DEVICE_COLUMNS
from stamen.console.view import device_row
from stamen.server.monitor import (
    MonitorSettings,
    MonitorState,
    Role,
    TokenStore,
    start_monitor,
)

TOKEN = "benchmark-operator-token"


class FullTable(App[None]):
    """A DataTable that holds every device as a row (the console before)."""

    def compose(self) -> ComposeResult:
        self.table: DataTable[str] = DataTable()
        yield self.table


async def full_table_ms(devices: list[Any]) -> float:
    """Load and paint every device as a DataTable row."""
    app = FullTable()
    async with app.run_test(size=(80, 24)) as pilot:
        for column in DEVICE_COLUMNS:
            app.table.add_column(column, key=column)
        now = time.time()
        started = time.perf_counter()
        for device in devices:
            app.table.add_row(*device_row(device, now), key=str(device.node_id))
        await pilot.pause()
        return 1000 * (time.perf_counter() - started)


async def empty_console_ms() -> tuple[float, float]:
    """An empty console's first paint (nothing to connect to), wall and CPU milliseconds:
    Textual's start-up."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    app = ConsoleApp(ConnectionSettings(f"127.0.0.1:{port}", TOKEN))
    started, started_cpu = time.perf_counter(), time.process_time()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        return (
            1000 * (time.perf_counter() - started),
            1000 * (time.process_time() - started_cpu),
        )


def monitor_process(num_devices: int, pipe: Any) -> None:
    """A monitor holding ``num_devices`` in a process of its own, until told to stop: the
    console's CPU time is then the console's alone."""
    state = MonitorState()
    state.on_start(total_rounds=5, initial_accuracy=0.1)
    populate(state, num_devices)
    server = start_monitor(MonitorSettings(tokens=TokenStore({TOKEN: Role.OPERATOR})), state)
    pipe.send(server.address)
    pipe.recv()
    server.stop()


def screen(num_devices: int, repeat: int) -> dict[str, Any]:
    """The real console against a monitor in another process: first paint, sort, page."""
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=monitor_process, args=(num_devices, theirs)
    )
    child.start()
    try:
        address = ours.recv()
        keys = ["o", "pagedown", "end", "home"] * repeat
        timed = asyncio.run(console_timings(address, TOKEN, num_devices, keys))
    finally:
        ours.send("stop")
        child.join(timeout=60)
    return {
        "console_first_paint_ms": timed.first_paint_ms,
        "console_first_paint_cpu_ms": timed.first_paint_cpu_ms,
        "console_key_sort_ms": statistics.median(timed.keys_ms["o"]),
        "console_key_sort_cpu_ms": statistics.median(timed.keys_cpu_ms["o"]),
        "console_key_page_ms": statistics.median(timed.keys_ms["pagedown"] + timed.keys_ms["end"]),
        "console_key_page_cpu_ms": statistics.median(
            timed.keys_cpu_ms["pagedown"] + timed.keys_cpu_ms["end"]
        ),
    }
