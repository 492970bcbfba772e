"""Exact resume: a run stopped after round k and resumed from its checkpoint ends bit for bit
where the uninterrupted run ends, for every strategy.

Each case runs R rounds uninterrupted on one fresh grid; then, on a second fresh grid, runs
with a :class:`CheckpointStore`, stops after round k through :class:`RunControl` (as an
operator would), and resumes from the checkpoint with a fresh strategy and engine. The
device-side state (the uplink codec's error-feedback residuals, each device's RNG) lives in
the grid's device contexts, as on real devices that keep it on disk, so the restart keeps the
same grid. The server-side state is only what the checkpoint holds.

FedBuff runs on the in-process ``LocalGrid``, where every reply completes when it is pushed,
so no message is in flight at an aggregation boundary (messages in flight are not carried
over a restart) and the resumed run is exact. FedDF with tier students runs on the
simulation grid, which knows each device's tier.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp import Grid

from stamen.config import StamenConfig, load_config
from stamen.launch import fleet_of
from stamen.launch.simulate import fleet_app, simulation_grid
from stamen.server import CollectingReporter, RoundRecord, run_federation
from stamen.server.checkpoint import CheckpointStore
from stamen.server.control import RunControl
from stamen.simulations import LocalGrid

ROUNDS, STOP_AFTER = 4, 2


def config_for(strategy: str, **overrides: Any) -> StamenConfig:
    base: dict[str, Any] = {
        "dataset": "digits",
        "model": "mlp",
        "num-devices": 8,
        "devices-per-round": 6,
        "rounds": ROUNDS,
        "partition": "iid",
        "lr": 0.1,
        "local-epochs": 1,
        "fleet.preset": "ideal",
        "federation.workers": 1,
        "strategy.name": strategy,
    }
    base.update(overrides)
    return load_config(overrides=base)


class StopAfter(CollectingReporter):
    """Asks the run to stop once round ``k`` is reported, as an operator would."""

    def __init__(self, control: RunControl, k: int) -> None:
        super().__init__()
        self.control, self.k = control, k

    def on_round(self, record: RoundRecord) -> None:
        super().on_round(record)
        if record.round == self.k:
            self.control.stop()


def grid_of(config: StamenConfig, simulated: bool) -> AbstractContextManager[Grid]:
    if simulated:
        return simulation_grid(config)
    fleet_of(config)
    return nullcontext(LocalGrid(fleet_app(config), config.federation.num_devices))


def uninterrupted_and_resumed(
    config: StamenConfig, tmp_path: Path, simulated: bool = False
) -> tuple[dict[str, Any], dict[str, Any], CollectingReporter]:
    with grid_of(config, simulated) as grid:
        whole = run_federation(grid, config, CollectingReporter())
    store = CheckpointStore(tmp_path / "state")
    with grid_of(config, simulated) as grid:
        control = RunControl()
        first = run_federation(
            grid, config, StopAfter(control, STOP_AFTER), control, checkpoints=store
        )
        resumed = CollectingReporter()
        run_federation(grid, config, resumed, checkpoints=store)
    return whole, first, resumed


SYNCHRONOUS = [
    ("fedavg", {}),
    ("fedprox", {}),
    ("fedadam", {}),
    ("fedyogi", {}),
    ("median", {}),
    ("trimmed-mean", {}),
    ("norm-bounded", {}),
    ("krum", {"strategy.krum_byzantine": 1}),
    ("multi-krum", {"strategy.krum_byzantine": 1}),
]


@pytest.mark.parametrize(("strategy", "overrides"), SYNCHRONOUS, ids=[s for s, _ in SYNCHRONOUS])
def test_a_resumed_synchronous_run_ends_on_the_uninterrupted_model(
    strategy: str, overrides: dict[str, Any], tmp_path: Path
) -> None:
    config = config_for(strategy, **overrides)
    whole, first, reporter = uninterrupted_and_resumed(config, tmp_path)
    resumed = reporter.summary
    assert first["stopped"] and first["rounds"] == STOP_AFTER
    assert resumed["rounds"] == whole["rounds"] == ROUNDS
    assert resumed["final_model_sha256"] == whole["final_model_sha256"]
    assert resumed["uplink_bytes"] == whole["uplink_bytes"]


def test_a_resumed_fedbuff_run_stays_asynchronous_and_exact(tmp_path: Path) -> None:
    config = config_for(
        "fedbuff", rounds=6, **{"strategy.buffer_size": 4, "strategy.concurrency": 6}
    )
    whole, first, reporter = uninterrupted_and_resumed(config, tmp_path)
    resumed = reporter.summary
    assert first["stopped"] and first["rounds"] == STOP_AFTER
    assert resumed["final_model_sha256"] == whole["final_model_sha256"]
    assert resumed["staleness_histogram"] == whole["staleness_histogram"]
    # Still asynchronous after the restart: the first round after it aggregates the updates
    # buffered before it, one version stale.
    after = [record for record in reporter.records if record.round > STOP_AFTER]
    assert any(s > 0 for s in after[0].staleness)


def test_a_resumed_feddf_run_restores_the_tier_students(tmp_path: Path) -> None:
    config = config_for(
        "fedavg",
        **{
            "num-devices": 9,
            "fleet.preset": "mixed",
            "distill.enabled": True,
            "distill.students": "mcu=0.25:4,iot=0.5",
            "distill.steps": 5,
            "distill.holdout_size": 200,
        },
    )
    whole, first, reporter = uninterrupted_and_resumed(config, tmp_path, simulated=True)
    resumed = reporter.summary
    assert first["stopped"] and first["rounds"] == STOP_AFTER
    assert resumed["final_model_sha256"] == whole["final_model_sha256"]
    assert resumed["final_accuracy"] == whole["final_accuracy"]


class ChangeThenStop(StopAfter):
    """An operator who samples fewer devices from round 2 on, and maybe stops after round k."""

    def __init__(self, control: RunControl, k: int | None) -> None:
        super().__init__(control, k or 0)

    def on_round(self, record: RoundRecord) -> None:
        if record.round == 1:
            self.control.set_devices_per_round(3)
        super().on_round(record)


def test_an_operators_settings_survive_a_restart(tmp_path: Path) -> None:
    config = config_for("fedavg")
    with grid_of(config, simulated=False) as grid:
        control = RunControl()
        whole = run_federation(grid, config, ChangeThenStop(control, None), control)
    store = CheckpointStore(tmp_path / "state")
    with grid_of(config, simulated=False) as grid:
        control = RunControl()
        run_federation(
            grid, config, ChangeThenStop(control, STOP_AFTER), control, checkpoints=store
        )
        resumed = CollectingReporter()
        run_federation(grid, config, resumed, checkpoints=store)
    # Rounds 3 and 4 ran on a restarted server with no operator: still 3 devices a round.
    assert [r.sampled for r in resumed.records] == [6, 3, 3, 3]
    assert resumed.summary is not None
    assert resumed.summary["final_model_sha256"] == whole["final_model_sha256"]
