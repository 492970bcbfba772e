"""Unit tests of the monitor's bookkeeping, the run controls, the tokens and the console view."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from stamen.console.devices import DeviceFilter, DevicePages, device_sort_key
from stamen.console.view import RunView, device_row, header_text
from stamen.contract.monitor import bearer, token_from_metadata
from stamen.core.errors import ConfigError
from stamen.protos.monitor.v1 import monitor_pb2 as pb
from stamen.server.control import ControlRefused, RunControl, RunState, StopRequested
from stamen.server.monitor import DeviceStatus, MonitorState, Role, TokenStore, load_tokens
from stamen.server.monitor.auth import OPERATOR_ENV, READ_ONLY_ENV, parse_token_lines
from stamen.server.monitor.state import RUN_STATES
from stamen.server.reporting import RoundRecord


def record(round_num: int, **changes: Any) -> RoundRecord:
    base = RoundRecord(
        round=round_num,
        accuracy=0.5,
        loss=1.0,
        sampled=3,
        accepted=3,
        rejected=0,
        uplink_bytes=300,
        downlink_bytes=900,
        uplink_bytes_fp32=3000,
        downlink_bytes_fp32=3000,
        sparsity=0.25,
        train_loss=1.5,
        seconds=2.0,
    )
    return dataclasses.replace(base, **changes)


@dataclasses.dataclass(frozen=True)
class TieredRecord(RoundRecord):
    """A record with per-tier and distillation fields, to check they are picked up."""

    tier_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    distillation: dict[str, float] = dataclasses.field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_round_becomes_start_and_end_events_with_device_outcomes() -> None:
    clock = Clock()
    state = MonitorState(clock=clock)
    state.on_start(total_rounds=4, initial_accuracy=0.1)
    state.round_started(1, [3, 1, 2], downlink_bytes={1: 300, 2: 300, 3: 300})
    clock.now = 1001.0
    state.device_replied(1, 1, uplink_bytes=100)
    state.device_replied(1, 2, uplink_bytes=100)
    state.device_replied(1, 3, uplink_bytes=0, error="RuntimeError: out of memory")
    state.on_round(
        record(1, accepted=1, rejected=1, rejections=[{"node_id": 2, "reason": "norm too large"}])
    )

    events = state.events_after(0)
    assert [e.kind for e in events] == [
        pb.EVENT_KIND_RUN_STARTED,
        pb.EVENT_KIND_ROUND_STARTED,
        pb.EVENT_KIND_ROUND_ENDED,
    ]
    assert [e.sequence for e in events] == [1, 2, 3]
    started, ended = events[1], events[2]
    assert list(started.participants) == [1, 2, 3]
    # Device 3 answered (with an error): a failure, not a dropout, as the summary counts it.
    assert list(ended.dropouts) == [] and ended.num_dropouts == 0
    assert ended.num_stragglers == 0
    assert [(r.node_id, r.reason) for r in ended.rejections] == [(2, "norm too large")]
    assert ended.uplink_compression == pytest.approx(10.0)
    assert ended.accuracy == 0.5 and ended.total_rounds == 4

    devices = {d.node_id: d for d in state.devices()}
    assert devices[1].state is DeviceStatus.IDLE and devices[1].uplink_bytes == 100
    assert devices[1].last_seen == 1001.0 and devices[1].rounds == 1
    assert devices[2].state is DeviceStatus.REJECTED and devices[2].rejected == 1
    assert devices[2].last_error == "norm too large"
    assert devices[3].state is DeviceStatus.FAILED and "out of memory" in devices[3].last_error
    assert all(d.downlink_bytes == 300 for d in devices.values())

    status = state.status()
    assert status.round == 1 and status.rejected_updates == 1
    assert status.health == pb.HEALTH_DEGRADED and "1 updates rejected" in status.health_detail
    assert status.last_round.sequence == 3


@pytest.mark.parametrize(
    ("counts", "stragglers", "dropouts", "state"),
    [
        ({}, [], [], DeviceStatus.NO_REPLY),
        ({"stragglers": 1}, [2], [], DeviceStatus.STRAGGLING),
        ({"dropouts": 1}, [], [2], DeviceStatus.DROPPED_OUT),
    ],
)
def test_a_device_that_never_answers_is_counted_as_the_grid_counted_it(
    counts: dict[str, int], stragglers: list[int], dropouts: list[int], state: DeviceStatus
) -> None:
    # The summary sums the records' counts; the monitor shows the same numbers.
    state_ = MonitorState()
    state_.round_started(1, [1, 2])
    state_.device_replied(1, 1, uplink_bytes=10)
    state_.round_closed(1)  # as the grid wrapper says after a synchronous round
    state_.on_round(record(1, accepted=1, **counts))
    ended = state_.events_after(0)[-1]
    assert (list(ended.stragglers), list(ended.dropouts)) == (stragglers, dropouts)
    assert ended.num_stragglers == counts.get("stragglers", 0)
    assert ended.num_dropouts == counts.get("dropouts", 0)
    assert state_.devices()[1].state is state
    status = state_.status()
    assert (status.stragglers, status.dropouts) == (len(stragglers), len(dropouts))
    if counts:
        assert status.health == pb.HEALTH_DEGRADED
        assert status.health_detail == (
            f"round 1: {len(dropouts)} dropouts, {len(stragglers)} stragglers"
        )
    else:
        assert status.health == pb.HEALTH_OK


def test_the_grid_names_its_stragglers_and_dropouts() -> None:
    state = MonitorState()
    state.round_started(1, [1, 2, 3, 4])
    state.device_replied(1, 1, uplink_bytes=10)
    state.device_replied(1, 4, uplink_bytes=10)  # answered after the quorum: surplus
    state.round_closed(1, stragglers=[3], dropouts=[2])
    state.on_round(record(1, accepted=1, stragglers=1, dropouts=1, surplus=1))
    ended = state.events_after(0)[-1]
    assert (list(ended.stragglers), list(ended.dropouts)) == ([3], [2])
    states = {d.node_id: d.state for d in state.devices()}
    assert states == {
        1: DeviceStatus.IDLE,
        2: DeviceStatus.DROPPED_OUT,
        3: DeviceStatus.STRAGGLING,
        4: DeviceStatus.IDLE,
    }


def test_fields_a_richer_round_record_carries_are_passed_on() -> None:
    state = MonitorState()
    state.round_started(2, [1, 2, 3])
    state.device_replied(2, 1, uplink_bytes=100)
    state.device_replied(2, 2, uplink_bytes=100)
    state.round_closed(2)
    state.on_round(
        TieredRecord(
            **dataclasses.asdict(record(2, stragglers=1, dropouts=1)),
            tier_accuracy={"phone": 0.9, "mcu": 0.7},
            distillation={"kl": 0.25},
        )
    )
    ended = state.events_after(0)[-1]
    # Device 3 never answered; the grid counted a straggler and a dropout without naming
    # them: the counts are the grid's, and no id is guessed.
    assert ended.num_stragglers == 1 and list(ended.stragglers) == []
    assert ended.num_dropouts == 1 and list(ended.dropouts) == []
    assert state.devices()[2].state is DeviceStatus.NO_REPLY
    assert dict(ended.tier_accuracy) == {"phone": 0.9, "mcu": 0.7}
    assert dict(ended.distillation) == {"kl": 0.25}


def test_a_late_subscriber_gets_the_history_and_a_waiting_one_wakes_up() -> None:
    state = MonitorState()
    state.on_start(2, 0.1)
    state.on_round(record(1))
    assert [e.sequence for e in state.events_after(0)] == [1, 2]
    assert [e.sequence for e in state.events_after(1)] == [2]

    got: list[int] = []
    waiter = threading.Thread(
        target=lambda: got.extend(e.sequence for e in state.wait_for_events(2, timeout=30))
    )
    waiter.start()
    state.on_round(record(2))
    waiter.join(timeout=30)
    assert got == [3]


def test_control_changes_become_events_and_status() -> None:
    control = RunControl()
    state = MonitorState(control=control)
    strategy = type("Strategy", (), {"devices_per_round": 3})()
    control.bind(strategy, grid=None, num_devices=10)  # type: ignore[arg-type]
    control.pause()
    control.set_devices_per_round(5)
    events = state.events_after(0)
    assert [e.message for e in events] == [
        "running",
        "pausing after the current round",
        "devices per round set to 5 from the next round",
    ]
    assert events[-1].kind == pb.EVENT_KIND_SETTING_CHANGED
    assert events[1].state == pb.RUN_STATE_PAUSING
    assert state.status().devices_per_round == 5
    assert state.status().strategy == "Strategy"


@pytest.mark.parametrize(
    ("state", "message", "said"),
    [
        (RunState.FINISHED, "finished 2 rounds", "finished 2 rounds · final accuracy 50.0%"),
        (
            RunState.STOPPED,
            "stopped by an operator after round 2",
            "stopped by an operator after round 2 · final accuracy 50.0%",
        ),
        (
            RunState.FAILED,
            "failed: RuntimeError: boom",
            "failed: RuntimeError: boom · final accuracy 50.0%",
        ),
    ],
)
def test_the_end_of_a_run_carries_its_final_accuracy(
    state: RunState, message: str, said: str
) -> None:
    control = RunControl()
    monitor = MonitorState(control=control)
    control.bind(object(), grid=None)  # type: ignore[arg-type]
    monitor.on_round(record(2, stragglers=1, dropouts=2))
    monitor.round_started(3, [4])  # a task still in flight when the run ends
    control.finished(state, message)
    assert monitor.devices()[0].state is DeviceStatus.IDLE
    end = monitor.events_after(0)[-1]
    assert end.kind == pb.EVENT_KIND_STATE_CHANGED and end.message == said
    assert end.accuracy == 0.5 and end.state == RUN_STATES[state]
    status = monitor.status()
    assert status.state_message == said and status.accuracy == 0.5
    assert (status.stragglers, status.dropouts) == (1, 2)
    view = RunView()
    lines = [line for event in monitor.events_after(0) for line in view.apply(event)]
    assert view.ended and lines[-1] == said and view.state_message == said
    assert (view.stragglers, view.dropouts) == (1, 2)


def test_the_device_table_hands_out_only_what_changed_since_a_version() -> None:
    state = MonitorState()
    state.round_started(1, range(1, 1001))
    version = state.device_version
    assert version == 1000
    state.device_replied(1, 7, uplink_bytes=10)
    state.device_replied(1, 3, uplink_bytes=10)
    now, changed, count = state.device_changes(version)
    assert now == version + 2 and count == 1000
    assert [(d.node_id, d.state) for d in changed] == [
        (7, pb.DEVICE_STATE_IDLE),
        (3, pb.DEVICE_STATE_IDLE),
    ]
    assert state.device_changes(now)[1] == []
    assert state.wait_for_device_changes(now, timeout=0.01) is False
    assert state.table_id != MonitorState().table_id


def device(node_id: int, **fields: Any) -> Any:
    return pb.Device(node_id=node_id, **fields)


def test_device_pages_sort_filter_and_page_a_large_table() -> None:
    pages = DevicePages(page_size=10)
    tiers = ("mcu", "iot", "phone")
    pages.apply(
        pb.DeviceChanges(
            table_id="t",
            version=1,
            snapshot=True,
            devices=[
                device(n, tier=tiers[n % 3], uplink_bytes=n * 7 % 1000, state=pb.DEVICE_STATE_IDLE)
                for n in range(1, 10_001)
            ],
        )
    )
    assert [d.node_id for d in pages.page()] == list(range(1, 11))
    pages.page_down()
    assert pages.position() == (11, 20, 10_000)
    pages.end()
    assert pages.position() == (9_991, 10_000, 10_000)
    pages.sort_by("up")  # the largest first
    assert pages.sort_reverse and pages.offset == 9_990
    pages.home()
    ups = [d.uplink_bytes for d in pages.page()]
    assert ups == sorted(ups, reverse=True) and ups[0] == 999
    pages.apply(
        pb.DeviceChanges(
            table_id="t",
            version=2,
            devices=[device(5, tier="mcu", uplink_bytes=10**6, state=pb.DEVICE_STATE_STRAGGLING)],
        )
    )
    assert pages.page()[0].node_id == 5 and pages.version == 2
    pages.set_filter(DeviceFilter.parse("straggling"))
    assert [d.node_id for d in pages.page()] == [5] and pages.position() == (1, 1, 1)
    pages.set_filter(DeviceFilter.parse("tier:phone 99"))
    kept = pages.ordered()
    assert kept and all(d.tier == "phone" and "99" in str(d.node_id) for d in kept)
    pages.apply(pb.DeviceChanges(table_id="u", version=1, snapshot=True, devices=[device(1)]))
    assert pages.table_id == "u" and list(pages.devices) == [1]


def test_pause_blocks_between_rounds_until_resumed_and_applies_new_settings() -> None:
    control = RunControl()
    strategy = type("Strategy", (), {"devices_per_round": 3})()
    control.bind(strategy, grid=None, num_devices=10)  # type: ignore[arg-type]
    control.pause()
    paused = threading.Event()
    control.add_listener(lambda state, _: paused.set() if state is RunState.PAUSED else None)
    worker = threading.Thread(target=control.between_rounds, args=(1,))
    worker.start()
    assert paused.wait(timeout=30)
    assert worker.is_alive()
    control.set_devices_per_round(7)
    assert control.resume() == "resumed"
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert strategy.devices_per_round == 7
    assert control.state is RunState.RUNNING


def test_stop_ends_a_paused_run_and_then_refuses_more_controls() -> None:
    control = RunControl()
    control.bind(object(), grid=None)  # type: ignore[arg-type]
    control.pause()
    errors: list[BaseException] = []

    def between() -> None:
        try:
            control.between_rounds(4)
        except StopRequested as error:
            errors.append(error)

    worker = threading.Thread(target=between)
    worker.start()
    control.stop()
    worker.join(timeout=30)
    assert [str(e) for e in errors] == ["stopped by an operator after round 4"]
    with pytest.raises(ControlRefused, match="the run is stopping"):
        control.pause()
    control.finished(RunState.STOPPED, "stopped")
    with pytest.raises(ControlRefused, match="the run has stopped"):
        control.resume()


@pytest.mark.parametrize(("count", "message"), [(0, "must be >= 1"), (11, "<= the fleet size 10")])
def test_devices_per_round_out_of_range_is_refused(count: int, message: str) -> None:
    control = RunControl()
    control.bind(object(), grid=None, num_devices=10)  # type: ignore[arg-type]
    with pytest.raises(ControlRefused, match=message):
        control.set_devices_per_round(count)


def test_deadline_only_for_strategies_that_have_one() -> None:
    control = RunControl()
    control.bind(type("NoDeadline", (), {})(), grid=None)  # type: ignore[arg-type]
    with pytest.raises(ControlRefused, match="NoDeadline has no round deadline"):
        control.set_deadline(30)
    timed = RunControl()
    strategy = type("Timed", (), {"deadline": 60.0})()
    timed.bind(strategy, grid=None)  # type: ignore[arg-type]
    assert timed.deadline == 60.0
    timed.set_deadline(15)
    timed.between_rounds(1)
    assert strategy.deadline == 15.0
    with pytest.raises(ControlRefused, match="> 0 seconds"):
        timed.set_deadline(0)


def test_token_roles_and_refusals() -> None:
    tokens = TokenStore({"operator-token-1": Role.OPERATOR, "watcher-token-1": Role.READ_ONLY})
    assert tokens.role_of("operator-token-1") is Role.OPERATOR
    assert tokens.role_of("watcher-token-1") is Role.READ_ONLY
    assert tokens.role_of("operator-token-2") is None
    assert tokens.role_of(None) is None
    assert tokens.operator_tokens() == ["operator-token-1"]
    with pytest.raises(ConfigError, match="at least 12 characters"):
        TokenStore({"short": Role.OPERATOR})


def test_tokens_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# who may do what\noperator op-token-in-file\nread-only ro-token-in-file\n")
    env = {OPERATOR_ENV: "op-token-from-env", READ_ONLY_ENV: "ro-token-from-env"}
    tokens = load_tokens(operator=["op-token-option"], token_file=path, env=env)
    assert dict(tokens.tokens) == {
        "op-token-in-file": Role.OPERATOR,
        "ro-token-in-file": Role.READ_ONLY,
        "ro-token-from-env": Role.READ_ONLY,
        "op-token-option": Role.OPERATOR,
        "op-token-from-env": Role.OPERATOR,
    }


def test_a_bad_token_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2: expected '<role> <token>'.*got 'admin'"):
        parse_token_lines(["operator long-enough-token", "admin another-long-token"], "tokens")
    with pytest.raises(ConfigError, match="cannot read token file"):
        load_tokens(token_file=tmp_path / "missing", env={})


def test_bearer_metadata_round_trip() -> None:
    assert token_from_metadata(bearer("a-token-of-some-length")) == "a-token-of-some-length"
    assert token_from_metadata([("authorization", "Basic abc")]) is None
    assert token_from_metadata([]) is None


def test_console_view_folds_events_into_series_and_lines() -> None:
    view = RunView()
    view.apply(pb.RoundEvent(sequence=1, kind=pb.EVENT_KIND_RUN_STARTED, total_rounds=3))
    lines = view.apply(
        pb.RoundEvent(
            sequence=2,
            kind=pb.EVENT_KIND_ROUND_ENDED,
            round=1,
            total_rounds=3,
            accuracy=0.25,
            loss=2.0,
            uplink_bytes=1500,
            uplink_compression=40.0,
            participants=[1, 2],
            accepted=1,
            rejections=[pb.Rejection(node_id=2, reason="stale model")],
            num_stragglers=1,
            stragglers=[2],
            state=pb.RUN_STATE_RUNNING,
        )
    )
    assert lines[0].startswith("round 1/3 done: acc 25.0% · loss 2.000 · 1/2 ok · up 1.5 KB 40x")
    assert "  1 stragglers (2)" in lines
    assert "  rejected node 2: stale model" in lines
    assert (view.accuracy, view.loss, view.uplink) == ([25.0], [2.0], [1500.0])
    assert view.state == "running" and view.rounds_done == 1
    view.reset()
    assert view.accuracy == [] and view.last_sequence == 0


def test_header_and_device_rows() -> None:
    status = pb.RunStatus(
        round=3,
        total_rounds=10,
        state=pb.RUN_STATE_PAUSED,
        accuracy=0.875,
        elapsed_seconds=75,
        devices_per_round=5,
        num_devices=20,
        role="read-only",
    )
    assert header_text(status, RunView()) == (
        "round 3/10 · paused · acc 87.5% · 01:15 · 5/20 dev/round · read-only"
    )
    # The event stream is ahead of the last status poll: the header follows the stream.
    view = RunView()
    view.apply(
        pb.RoundEvent(
            sequence=1,
            kind=pb.EVENT_KIND_ROUND_ENDED,
            round=4,
            accuracy=0.9,
            state=pb.RUN_STATE_RUNNING,
        )
    )
    assert header_text(status, view).startswith("round 4/10 · running · acc 90.0% · ")
    devices = [
        pb.Device(node_id=1, uplink_bytes=10, state=pb.DEVICE_STATE_IDLE),
        pb.Device(node_id=2, uplink_bytes=500, state=pb.DEVICE_STATE_REJECTED, rejected=2),
    ]
    assert [d.node_id for d in sorted(devices, key=device_sort_key("up"), reverse=True)] == [2, 1]
    assert device_row(devices[1], now=0.0)[2:] == ("rejected", "0", "500 B", "0 B", "2", "-")
    dropped = pb.Device(node_id=3, state=pb.DEVICE_STATE_DROPPED_OUT)
    assert device_row(dropped, now=0.0)[2] == "dropped out"
