"""The console, driven headless by Textual's pilot, against a monitor fed by a real federation."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator

import pytest
from test_simulation_grid import three_tier_fleet
from textual.pilot import Pilot

from stamen.config import StamenConfig, load_config
from stamen.console import ConnectionSettings, ConsoleApp
from stamen.launch import simulate
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.server.control import RunState
from stamen.server.monitor import MonitorSettings, MonitorState, Role, TokenStore, start_monitor
from stamen.server.monitor.session import MonitoredRun

OPERATOR = "operator-token-for-tests"
READ_ONLY = "read-only-token-for-tests"
TOKENS = TokenStore({OPERATOR: Role.OPERATOR, READ_ONLY: Role.READ_ONLY})
ROUNDS = 40
SIZE = (80, 24)


async def wait_for(pilot: Pilot[None], predicate: Callable[[], bool], timeout: float = 120) -> None:
    """Let the app run until ``predicate`` holds; fail clearly if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the console never reached the expected state")
        await pilot.pause(0.05)


def wait_until(predicate: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the server never reached the expected state")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run() -> Iterator[MonitoredRun]:
    """A real federation with the monitor, paused after round 1 (tests resume and stop it)."""
    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "rounds": ROUNDS,
            "num-devices": 6,
            "devices-per-round": 3,
        }
    )
    with MonitoredRun(config, MonitorSettings(tokens=TOKENS)) as monitored:
        monitored.control.pause()
        monitored.run_in_background(simulate)
        wait_until(lambda: monitored.control.state is RunState.PAUSED)
        yield monitored


def console(run: MonitoredRun, token: str | None) -> ConsoleApp:
    return ConsoleApp(ConnectionSettings(run.server.address, token), poll_interval=0.2)


def test_header_devices_and_log_show_the_run(run: MonitoredRun) -> None:
    async def scenario() -> None:
        app = console(run, OPERATOR)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(
                pilot,
                lambda: (
                    app.table.row_count == 3
                    and app.status is not None
                    and "paused after round 1" in app.log_lines
                ),
            )
            first, second = app.header_lines()
            assert first.startswith(f"round 1/{ROUNDS} · paused · acc ")
            assert first.endswith("3/6 dev/round · operator")
            assert second == f"{run.server.address} · connected"
            assert any(line.startswith(f"round 1/{ROUNDS} done: acc") for line in app.log_lines)
            assert "paused after round 1" in app.log_lines
            node_ids = sorted(int(app.table.get_row_at(i)[0]) for i in range(3))
            assert node_ids == sorted(d.node_id for d in run.state.devices())
            assert [app.table.get_row_at(i)[3] for i in range(3)] == ["1", "1", "1"]
            await pilot.press("o")  # sort by the next column, then back by node id
            assert app.table.sort_column == "tier"
            assert app.view.accuracy and len(app.view.accuracy) == 1

    asyncio.run(scenario())


def test_a_read_only_console_cannot_pause_and_says_so(run: MonitoredRun) -> None:
    async def scenario() -> None:
        app = console(run, READ_ONLY)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.status is not None)
            assert app.header_lines()[0].endswith("read-only")
            await pilot.press("p")
            await wait_for(pilot, lambda: any("refused" in line for line in app.log_lines))
            refusal = next(line for line in app.log_lines if "refused" in line)
            assert refusal == (
                "pause refused: not allowed: this token is read-only: "
                "it cannot pause, resume, stop or change settings"
            )
        assert run.control.state is RunState.PAUSED

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "refused: no token: the monitor needs an operator or read-only token"),
        ("a-wrong-token-value", "refused: the token is not valid for this server"),
    ],
)
def test_a_missing_or_wrong_token_is_shown_plainly(
    run: MonitoredRun, token: str | None, reason: str
) -> None:
    async def scenario() -> None:
        app = console(run, token)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.refused)
            second = app.header_lines()[1]
            assert second.startswith(f"refused: {reason}")
            assert any(line.startswith(reason) for line in app.log_lines)
            assert app.table.row_count == 0

    asyncio.run(scenario())


def test_resume_pause_devices_and_stop_take_effect_on_the_server(run: MonitoredRun) -> None:
    async def scenario() -> None:
        app = console(run, OPERATOR)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.status is not None)
            await pilot.press("plus")
            await wait_for(pilot, lambda: run.control.devices_per_round == 4)
            await pilot.press("r")
            await wait_for(pilot, lambda: run.state.status().round >= 3)
            await wait_for(pilot, lambda: app.view.rounds_done >= 2)
            await pilot.press("p")
            await wait_for(pilot, lambda: run.control.state is RunState.PAUSED)
            paused_at = run.state.status().round
            await wait_for(pilot, lambda: "paused" in app.header_lines()[0])
            assert app.view.rounds_done == paused_at
            assert f"paused after round {paused_at}" in app.log_lines

            await pilot.press("s")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmStop")
            await pilot.press("n")
            assert "stop cancelled" in app.log_lines
            assert run.control.state is RunState.PAUSED

            await pilot.press("s")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmStop")
            await pilot.press("y")
            await wait_for(pilot, lambda: run.control.state is RunState.STOPPED)
            await wait_for(pilot, lambda: "stopped" in app.header_lines()[0])
            assert any(line.startswith("stopped by an operator") for line in app.log_lines)

        assert run.thread is not None
        run.thread.join(timeout=120)
        assert run.summary is not None and run.summary["stopped"] is True
        assert run.summary["rounds"] == paused_at < ROUNDS
        later = [e for e in run.state.events_after(0) if e.kind == 2 and e.round > 1]
        assert later and all(len(e.participants) == 4 for e in later)

    asyncio.run(scenario())


def test_the_console_reconnects_when_the_server_restarts() -> None:
    state = MonitorState()
    state.on_start(total_rounds=7, initial_accuracy=0.1)
    server = start_monitor(MonitorSettings(tokens=TOKENS), state)
    port = server.port

    async def scenario() -> None:
        nonlocal server
        app = ConsoleApp(
            ConnectionSettings(server.address, OPERATOR), poll_interval=0.2, reconnect_delay=0.2
        )
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.connection == "connected")
            server.stop()
            await wait_for(pilot, lambda: app.connection == "reconnecting")
            await wait_for(pilot, lambda: app.attempts >= 3)
            # One plain line for the outage, whatever the number of attempts; the header
            # counts them. No raw gRPC text anywhere.
            lost = [line for line in app.log_lines if line.startswith("connection lost")]
            assert lost == [
                f"connection lost: cannot reach the monitor at {server.address}: "
                "connection refused (is the server running, on this port?); reconnecting"
            ] or lost == ["connection lost: the monitor closed the stream; reconnecting"]
            assert app.header_lines()[1].startswith("reconnecting (attempt ")
            assert not any("ipv4:" in line or "failed to connect" in line for line in app.log_lines)
            restarted = MonitorState()
            restarted.on_start(total_rounds=9, initial_accuracy=0.2)
            server = start_monitor(MonitorSettings(port=port, tokens=TOKENS), restarted)
            await wait_for(pilot, lambda: app.connection == "connected")
            await wait_for(pilot, lambda: app.header_lines()[0].startswith("round 0/9"))
            # The status poll and the event stream reconnect separately: wait for both.
            await wait_for(
                pilot, lambda: "run started: 9 rounds · initial acc 20.0%" in app.log_lines
            )
            assert app.log_lines[0] == "reconnected; the history follows"
            assert not any("7 rounds" in line for line in app.log_lines)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def run_to_the_end(config: StamenConfig) -> tuple[ConsoleApp, MonitoredRun, tuple[str, str]]:
    """A real federation watched by a console until it ends and its monitor closes.

    Returns the console (as it was when the test let it go), the finished run, and
    the header as it was when the end arrived, before the monitor closed.
    """
    run = MonitoredRun(config, MonitorSettings(tokens=TOKENS)).start()
    app = ConsoleApp(
        ConnectionSettings(run.server.address, READ_ONLY), poll_interval=0.2, reconnect_delay=0.2
    )

    header: list[tuple[str, str]] = []

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.connection == "connected")
            run.run_in_background(simulate)
            await wait_for(pilot, lambda: run.summary is not None or run.error is not None)
            await wait_for(pilot, lambda: app.view.ended)
            header.append(app.header_lines())
            # What `stamen simulate` does once the run is over: the monitor goes.
            await asyncio.to_thread(run.stop)
            await wait_for(pilot, lambda: app.connection == "closed")
            await pilot.pause(0.6)  # three reconnect delays: no attempt may follow

    try:
        asyncio.run(scenario())
    finally:
        run.stop()
    assert run.error is None and run.summary is not None
    return app, run, header[0]


@pytest.fixture(scope="module")
def ended() -> tuple[ConsoleApp, MonitoredRun, tuple[str, str]]:
    """A run with stragglers and dropouts, watched to its end by a read-only console.

    The simulation grid's three-tier fleet (a deadline that microcontrollers miss,
    every tier dropping out of one task in five), with over-selection.
    """
    config = three_tier_fleet(
        **{
            "num-devices": 30,
            "devices-per-round": 10,
            "rounds": 3,
            "federation.over_selection": 0.5,
        }
    )
    return run_to_the_end(config)  # type: ignore[arg-type]


def test_the_end_of_a_run_is_shown_once_and_the_console_stops_reconnecting(
    ended: tuple[ConsoleApp, MonitoredRun, tuple[str, str]],
) -> None:
    app, run, _ = ended
    assert run.summary is not None
    final = 100 * run.summary["final_accuracy"]
    end = f"finished 3 rounds · final accuracy {final:.1f}%"
    first, second = app.header_lines()
    assert first.startswith("round 3/3 · finished · acc ") and f"acc {final:.1f}%" in first
    assert second == f"monitor closed (q quits) · {end}"
    assert app.log_lines[-1] == end and app.log_lines.count(end) == 1
    # No reconnecting, no gRPC text: the monitor closing after the end is not a lost link.
    assert not any("connection lost" in line or "reconnect" in line for line in app.log_lines)
    assert not any("UNAVAILABLE" in line or "ipv4:" in line for line in app.log_lines)
    assert app.attempts == 0


def test_stragglers_and_dropouts_are_counted_as_the_summary_counts_them(
    ended: tuple[ConsoleApp, MonitoredRun, tuple[str, str]],
) -> None:
    app, run, header = ended
    summary = run.summary
    assert summary is not None
    assert summary["stragglers"] > 0 and summary["dropouts"] > 0
    assert (app.view.stragglers, app.view.dropouts) == (summary["stragglers"], summary["dropouts"])
    in_all = f"{summary['stragglers']} stragglers, {summary['dropouts']} dropouts in all"
    assert in_all in header[1]
    per_round = [re.match(r"  (\d+) (stragglers|dropouts)", line) for line in app.log_lines]
    logged = {"stragglers": 0, "dropouts": 0}
    for found in filter(None, per_round):
        logged[found.group(2)] += int(found.group(1))
    assert logged == {"stragglers": summary["stragglers"], "dropouts": summary["dropouts"]}
    # The device table shows who they were in the last round, as the grid named them.
    last = [e for e in run.state.events_after(0) if e.kind == pb.EVENT_KIND_ROUND_ENDED][-1]
    assert len(last.stragglers) == last.num_stragglers and len(last.dropouts) == last.num_dropouts
    states = {d.node_id: d.state for d in app.table.pages.devices.values()}
    assert all(states[n] == pb.DEVICE_STATE_STRAGGLING for n in last.stragglers)
    assert all(states[n] == pb.DEVICE_STATE_DROPPED_OUT for n in last.dropouts)
