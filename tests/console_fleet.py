"""A large fleet in a real monitor, and the console's timings against it (tests, benchmarks).

:func:`populate` feeds a :class:`MonitorState` through the calls the monitor's
grid wrapper and the round reporter make in a real run: a round sent to every
device, replies (some with errors), the grid naming its stragglers and
dropouts, and the round's record. :func:`console_timings` drives the real
console, headless, against a real monitor service and times what an operator
waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from textual.pilot import Pilot

from stamen.console import ConnectionSettings, ConsoleApp
from stamen.server.monitor import MonitorState
from stamen.server.reporting import RoundRecord

TIERS = ("mcu", "iot", "phone")


@dataclass(frozen=True)
class FleetRound:
    """Who did what in one populated round."""

    stragglers: list[int]
    dropouts: list[int]
    failed: list[int]


def populate(state: MonitorState, num_devices: int, server_round: int = 1) -> FleetRound:
    """Run one round of ``num_devices`` devices through ``state``: every 50th device is a
    straggler, every 70th drops out, every 90th fails; the others answer."""
    nodes = range(1, num_devices + 1)
    state.round_started(
        server_round,
        nodes,
        downlink_bytes=dict.fromkeys(nodes, 12_000),
        tiers={n: TIERS[n % 3] for n in nodes},
    )
    stragglers = [n for n in nodes if n % 50 == 0]
    dropouts = [n for n in nodes if n % 70 == 0 and n % 50]
    failed = [n for n in nodes if n % 90 == 0 and n % 50 and n % 70]
    silent = {*stragglers, *dropouts}
    for node in nodes:
        if node not in silent:
            error = "RuntimeError: out of memory" if node in failed else None
            state.device_replied(server_round, node, uplink_bytes=(node * 37) % 4000, error=error)
    state.round_closed(server_round, stragglers=stragglers, dropouts=dropouts)
    answered = num_devices - len(silent)
    state.on_round(
        RoundRecord(
            round=server_round,
            accuracy=0.5 + 0.01 * server_round,
            loss=1.0,
            sampled=num_devices,
            accepted=answered - len(failed),
            rejected=0,
            uplink_bytes=answered * 2000,
            downlink_bytes=num_devices * 12_000,
            uplink_bytes_fp32=answered * 40_000,
            downlink_bytes_fp32=num_devices * 40_000,
            sparsity=0.5,
            train_loss=1.2,
            seconds=2.0,
            participants=answered,
            stragglers=len(stragglers),
            dropouts=len(dropouts),
        )
    )
    return FleetRound(stragglers, dropouts, failed)


@dataclass
class ConsoleTimings:
    """Milliseconds from a start (or a key press) to the screen showing the result: wall
    time, and the CPU time of this process (on a shared machine, the wall time is mostly
    the wait for a core; the CPU time is what a quiet machine would wait)."""

    first_paint_ms: float = 0.0
    first_paint_cpu_ms: float = 0.0
    keys_ms: dict[str, list[float]] = field(default_factory=dict)
    keys_cpu_ms: dict[str, list[float]] = field(default_factory=dict)


async def wait_for(pilot: Pilot[None], predicate: Callable[[], bool], timeout: float) -> None:
    """Let the app run until ``predicate`` holds; fail clearly if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the console never reached the expected state")
        await pilot.pause(0.002)


async def console_timings(
    address: str,
    token: str,
    num_devices: int,
    keys: Sequence[str],
    *,
    size: tuple[int, int] = (80, 24),
    check: Callable[[ConsoleApp, str], None] | None = None,
) -> ConsoleTimings:
    """Start the console against ``address``, time its first paint of the device table
    (all ``num_devices`` devices known), then press each of ``keys`` and time until the
    table shows the result (``check(app, key)`` may assert what it shows)."""
    timings = ConsoleTimings()
    app = ConsoleApp(ConnectionSettings(address, token))
    started, started_cpu = time.perf_counter(), time.process_time()
    async with app.run_test(size=size) as pilot:
        await wait_for(
            pilot,
            lambda: app.table.row_count > 0 and len(app.table.pages.devices) == num_devices,
            timeout=60,
        )
        await pilot.pause()  # the frame with the rows in it
        timings.first_paint_ms = 1000 * (time.perf_counter() - started)
        timings.first_paint_cpu_ms = 1000 * (time.process_time() - started_cpu)
        for key in keys:
            shown = _shown(app)
            pressed, pressed_cpu = time.perf_counter(), time.process_time()
            await pilot.press(key)
            await wait_for(pilot, lambda shown=shown: _shown(app) != shown, timeout=30)
            await pilot.pause()
            timings.keys_ms.setdefault(key, []).append(1000 * (time.perf_counter() - pressed))
            cpu_ms = 1000 * (time.process_time() - pressed_cpu)
            timings.keys_cpu_ms.setdefault(key, []).append(cpu_ms)
            if check is not None:
                check(app, key)
    return timings


def _shown(app: ConsoleApp) -> tuple[Any, ...]:
    """What the device table shows: its caption and its rows."""
    table = app.table
    return (table.border_title, *(tuple(table.get_row_at(i)) for i in range(table.row_count)))
