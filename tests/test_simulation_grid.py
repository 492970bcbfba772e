"""The simulation grid: its clock, round policy, fleet behaviour and reproducibility."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stamen.config import FleetMix, FleetPreset, TierProfile, fleet_mix, load_config
from stamen.core.fleet import PolicyGrid, RoundPolicy, StreamingGrid, TieredGrid
from stamen.launch import simulate
from stamen.simulations import SimulationGrid
from stamen.simulations.profiles import build_fleet

FAST = TierProfile("fast", gflops=1.0, memory_mb=1, uplink_kbps=8, downlink_kbps=8, latency_ms=0)
SLOW = TierProfile("slow", gflops=0.1, memory_mb=1, uplink_kbps=8, downlink_kbps=8, latency_ms=0)
"""1 kbit/s links are 1,000 bytes per second: transfer times are easy to check by hand."""

FLOPS = 5e6
"""Training FLOPs per sample: 100 samples for 2 epochs take 1 s on FAST and 10 s on SLOW."""


def echo_app() -> ClientApp:
    """A device that trains on 100 samples and answers with 1,000 bytes."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        payload = ArrayRecord({"update": Array(np.zeros(1000, np.uint8))})
        metrics = MetricRecord({"num-examples": 100})
        return Message(RecordDict({"update": payload, "metrics": metrics}), reply_to=message)

    return app


@pytest.fixture
def two_speed_grid() -> Iterator[SimulationGrid]:
    """Ten devices: the first half fast, the second half ten times slower."""
    fleet = build_fleet(FleetMix((FAST, SLOW), (0.5, 0.5)), num_devices=10, seed=0)
    fleet.tier_index[:] = [0] * 5 + [1] * 5
    with SimulationGrid(echo_app(), fleet, flops_per_sample=FLOPS, workers=2) as grid:
        yield grid


def task(grid: SimulationGrid, node_id: int) -> Message:
    """A train message carrying 500 bytes of model, asking for two local epochs."""
    content = RecordDict(
        {
            "model": ArrayRecord({"payload": Array(np.zeros(500, np.uint8))}),
            "config": ConfigRecord({"stamen.local-epochs": 2}),
        }
    )
    return Message(content, node_id, "train", group_id="1")


def test_reply_times_follow_tier_speed_and_actual_bytes(two_speed_grid: SimulationGrid) -> None:
    grid = two_speed_grid
    assert isinstance(grid, PolicyGrid) and isinstance(grid, TieredGrid)
    replies = list(grid.send_and_receive([task(grid, 1), task(grid, 6)]))
    assert len(replies) == 2
    # Slowest device: 0.5 s download + 10 s training + 1 s upload.
    assert grid.now == pytest.approx(11.5)
    timing = grid.last_timing()
    assert timing is not None and timing.participants == 2 and timing.stragglers == 0
    assert grid.tier_of(1) == "fast" and grid.tier_of(6) == "slow"


def test_each_reply_is_shown_as_it_arrives_for_early_checks(
    two_speed_grid: SimulationGrid,
) -> None:
    grid = two_speed_grid
    assert isinstance(grid, StreamingGrid)
    seen: list[int] = []
    grid.on_each_reply(lambda reply: seen.append(reply.metadata.src_node_id))
    messages = [task(grid, node) for node in (1, 2, 6)]
    replies = list(grid.send_and_receive(messages))
    assert sorted(seen) == [1, 2, 6] == sorted(r.metadata.src_node_id for r in replies)
    ids = {m.metadata.message_id for m in messages}
    assert {r.metadata.reply_to_message_id for r in replies} == ids  # how checks are matched
    grid.on_each_reply(None)
    grid.send_and_receive([task(grid, 3)])
    assert len(seen) == 3


def test_deadline_drops_stragglers_and_closes_the_round_at_the_deadline(
    two_speed_grid: SimulationGrid,
) -> None:
    grid = two_speed_grid
    grid.set_round_policy(RoundPolicy(deadline=5.0))
    replies = list(grid.send_and_receive([task(grid, n) for n in range(1, 11)]))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3, 4, 5]
    timing = grid.last_timing()
    assert timing is not None
    assert (timing.participants, timing.stragglers, timing.dropouts) == (5, 5, 0)
    # The server cannot tell a straggler from a lost device, so it waits out the deadline.
    assert timing.seconds == pytest.approx(5.0)


def test_over_selection_keeps_the_first_answers_and_closes_early(
    two_speed_grid: SimulationGrid,
) -> None:
    grid = two_speed_grid
    grid.set_round_policy(RoundPolicy(quorum=3))
    replies = list(grid.send_and_receive([task(grid, n) for n in (1, 2, 3, 6, 7)]))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    timing = grid.last_timing()
    assert timing is not None and timing.surplus == 2
    assert timing.seconds == pytest.approx(2.5)  # the fast devices' time, not the slow ones'


def test_asynchronous_pulls_advance_the_clock_to_each_completion(
    two_speed_grid: SimulationGrid,
) -> None:
    grid = two_speed_grid
    ids = list(grid.push_messages([task(grid, 6), task(grid, 1)]))
    assert grid.now == 0.0
    first = list(grid.pull_messages(ids))
    assert [r.metadata.src_node_id for r in first] == [1]
    assert grid.now == pytest.approx(2.5)
    second = list(grid.pull_messages(ids))
    assert [r.metadata.src_node_id for r in second] == [6]
    assert grid.now == pytest.approx(11.5)
    assert list(grid.pull_messages(ids)) == []


def test_availability_and_dropouts_follow_the_tier() -> None:
    flaky = TierProfile("flaky", 1.0, 1, 8, 8, availability=0.5, dropout=0.5)
    fleet = build_fleet(FleetMix((flaky,), (1.0,)), num_devices=2000, seed=3)
    online = fleet.online(0.0)
    assert 900 < len(online) < 1100
    assert not np.array_equal(online, fleet.online(3600.0))  # another window, other devices
    assert np.array_equal(online, fleet.online(1.0))  # the same window, the same devices
    assert 900 < int(fleet.dropouts(0).sum()) < 1100


def test_fleet_presets_mix_tiers_by_share() -> None:
    fleet = build_fleet(fleet_mix(FleetPreset.MIXED), num_devices=10_000, seed=0)
    assert fleet.tier_counts() == {"phone": 5000, "iot": 3500, "mcu": 1500}
    assert fleet.tier_index.nbytes == 10_000  # one byte per device
    speeds = [tier.gflops for tier in fleet.mix.tiers]
    assert max(speeds) / min(speeds) == pytest.approx(10.0)


def small_config(**overrides: object) -> object:
    base: dict[str, object] = {
        "dataset": "digits",
        "model": "mlp",
        "num-devices": 12,
        "devices-per-round": 4,
        "rounds": 3,
        # These tests time and count devices; one epoch keeps them as fast as they were.
        "local-epochs": 1,
        "batch-size": 20,
    }
    return load_config(overrides={**base, **overrides})


def test_results_do_not_depend_on_the_number_of_workers() -> None:
    one = simulate(small_config(**{"federation.workers": 1}))  # type: ignore[arg-type]
    three = simulate(small_config(**{"federation.workers": 3}))  # type: ignore[arg-type]
    assert one["final_model_sha256"] == three["final_model_sha256"]
    assert one["simulated_seconds"] == three["simulated_seconds"]
    assert one["dropouts"] == three["dropouts"]


@pytest.mark.parametrize("preset", ["fp32", "edge"])
def test_training_devices_together_matches_one_by_one_within_a_point(preset: str) -> None:
    lenet = {
        "dataset": "mnist-small",
        "model": "lenet",
        "preset": preset,
        "partition": "iid",
        "num-devices": 24,
        "devices-per-round": 12,
        "rounds": 4,
        "local-epochs": 5,
        "lr": 0.1,
        "data.samples_per_device": 60,
    }
    alone = simulate(small_config(**lenet, **{"federation.device_batch": 1}))  # type: ignore[arg-type]
    together = simulate(small_config(**lenet, **{"federation.workers": 1}))  # type: ignore[arg-type]
    two_workers = simulate(small_config(**lenet, **{"federation.workers": 2}))  # type: ignore[arg-type]
    # Stacked kernels sum in another order: the same training up to float rounding, which
    # moves a few of the 1,000 test images (0.5 points fp32, 0.1 edge measured; the stated
    # tolerance is 1).
    assert alone["final_accuracy"] > 0.7
    assert together["final_accuracy"] == pytest.approx(alone["final_accuracy"], abs=0.01)
    assert two_workers["final_accuracy"] == pytest.approx(together["final_accuracy"], abs=0.01)


def test_summary_reports_device_time_and_per_round_participation(tmp_path: Path) -> None:
    from stamen.server import ResultsWriter

    config = small_config(
        **{"federation.deadline": 2.0, "federation.over_selection": 0.5, "fleet.preset": "mixed"}
    )
    summary = simulate(config, ResultsWriter(tmp_path))  # type: ignore[arg-type]
    assert summary["simulated_seconds"] > 0
    assert "time_to_accuracy" in summary
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert line["sampled"] == 6  # 4 per round plus 50% over-selection
        assert (
            line["participants"] + line["stragglers"] + line["dropouts"] + line["surplus"]
            == line["sampled"]
        )
        assert line["participants"] <= 4
        assert 0 < line["simulated_seconds"] <= 2.0 + 1e-9
    assert lines[-1]["clock"] == pytest.approx(summary["simulated_seconds"])


def test_fixed_size_device_data_gives_every_device_the_same_rows() -> None:
    from stamen.client import FleetData, device_data
    from stamen.core.errors import ConfigError

    config = small_config(**{"data.samples_per_device": 60, "num-devices": 10_000})
    fleet = FleetData(config.data, num_devices=10_000, seed=0)  # type: ignore[attr-defined]
    first = device_data(fleet, 9_999)
    assert first.x.shape[0] == 60
    assert np.array_equal(first.y.numpy(), device_data(fleet, 9_999).y.numpy())
    natural = small_config(**{"data.samples_per_device": 60, "partition": "natural"})
    with pytest.raises(ConfigError, match="natural"):
        device_data(FleetData(natural.data, num_devices=12, seed=0), 0)  # type: ignore[attr-defined]


def three_tier_fleet(**changes: object) -> object:
    """10,000 devices in three tiers, one in five dropping out of each task."""
    overrides: dict[str, object] = {
        "dataset": "digits",
        "model": "mlp",
        "data.samples_per_device": 20,
        "num-devices": 10_000,
        "devices-per-round": 40,
        "rounds": 2,
        "local-epochs": 1,  # the deadline below is sized for one step of 20 rows
        "batch-size": 20,
        "federation.deadline": 1.0,
        "fleet.tiers.phone.share": 0.5,
        "fleet.tiers.phone.dropout": 0.2,
        "fleet.tiers.iot.share": 0.3,
        "fleet.tiers.iot.dropout": 0.2,
        "fleet.tiers.mcu.share": 0.2,
        "fleet.tiers.mcu.dropout": 0.2,
        **changes,
    }
    return load_config(overrides=overrides)


def test_a_ten_thousand_device_three_tier_fleet_reports_its_losses() -> None:
    summary = simulate(three_tier_fleet())  # type: ignore[arg-type]
    assert summary["rounds"] == 2 and summary["num_devices"] == 10_000
    assert summary["dropouts"] > 0
    # A microcontroller's round trip (300 ms latency each way, 128/64 kbit/s links) exceeds 1 s.
    assert summary["stragglers"] > 0
    assert summary["simulated_seconds"] == pytest.approx(2.0)  # two rounds, each to its deadline


def test_a_slower_uplink_takes_longer_and_a_tighter_deadline_drops_more() -> None:
    base = simulate(three_tier_fleet(**{"federation.deadline": 0.0}))  # type: ignore[arg-type]
    slow = simulate(
        three_tier_fleet(
            **{
                "federation.deadline": 0.0,
                "fleet.tiers.phone.uplink_kbps": 200,
                "fleet.tiers.iot.uplink_kbps": 100,
                "fleet.tiers.mcu.uplink_kbps": 6.4,
            }
        )  # type: ignore[arg-type]
    )
    assert slow["simulated_seconds"] > base["simulated_seconds"]
    loose = simulate(three_tier_fleet(**{"federation.deadline": 10.0}))  # type: ignore[arg-type]
    tight = simulate(three_tier_fleet(**{"federation.deadline": 1.0}))  # type: ignore[arg-type]
    assert tight["stragglers"] > loose["stragglers"]
