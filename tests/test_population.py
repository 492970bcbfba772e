"""A million registered devices: no Python object per device, bounded device state."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp import Grid

from stamen.config import FleetPreset, fleet_mix, load_config
from stamen.launch import simulate
from stamen.simulations.device_states import DeviceStates
from stamen.simulations.profiles import build_fleet
from stamen.simulations.sim_grid import NodeIds
from stamen.transport.node_ids import sorted_node_ids

MILLION = 1_000_000


def residual(seed: int, size: int = 1_000) -> bytes:
    """A device state as a worker sends it: a float16 residual in a pickled RecordDict."""
    values = np.random.default_rng(seed).standard_normal(size).astype(np.float16)
    return pickle.dumps(RecordDict({"residual": ArrayRecord({"flat": Array(values)})}))


def test_device_states_stay_within_their_memory_budget_and_come_back_exactly() -> None:
    blobs = {device: residual(device) for device in range(1, 201)}
    size = len(blobs[1])
    states = DeviceStates(memory_budget=50 * size)
    try:
        for device, blob in blobs.items():
            states.put(device, blob)
            assert states.memory_bytes <= 50 * size
        assert len(states) == 200 and states.spilled_devices == 150
        assert sorted(states) == list(blobs)
        # The oldest spilled first; every state returns byte for byte, wherever it waited.
        assert all(states.take(device) == blob for device, blob in blobs.items())
        assert len(states) == 0 and states.spilled_bytes == 0 and states.take(7) is None
        states.put(3, b"new")
        states.put(3, b"newer")  # a device has one state: the last one stored
        assert states.take(3) == b"newer" and states.take(3) is None
    finally:
        states.close()


def test_the_spill_file_reuses_its_space_and_is_removed_on_close() -> None:
    states = DeviceStates(memory_budget=0)  # every state on disk
    blob = residual(0, size=20_000)
    for round_num in range(10):  # the same 50 devices train in every round
        for device in range(50):
            assert round_num == 0 or states.take(device) == blob
            states.put(device, blob)
    spill = next(Path(p) for p in _open_files(states))
    # SQLite reuses the pages of states taken back: ten rounds take one round's space.
    assert spill.stat().st_size < 1.5 * 50 * len(blob)
    states.close()
    assert not spill.parent.exists()


def _open_files(states: DeviceStates) -> list[str]:
    connection = states._spill
    assert connection is not None
    return [row[2] for row in connection.execute("PRAGMA database_list") if row[2]]


def test_a_million_registered_devices_are_sampled_without_an_object_per_device() -> None:
    fleet = build_fleet(fleet_mix(FleetPreset.MIXED), num_devices=MILLION, seed=0)
    assert fleet.tier_index.nbytes == MILLION  # the one byte a registered device keeps

    class Online:  # the simulation grid's answer, without its worker processes
        def get_node_ids(self) -> NodeIds:
            return NodeIds(fleet.online(0.0) + 1)

    grid = cast(Grid, Online())
    tracemalloc.start()
    ids = sorted_node_ids(grid)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The draw, the tiers' availabilities and the ids: arrays of a few bytes per device.
    # A list of Python ints alone would be 36 bytes per online device.
    assert peak / MILLION < 32, peak
    assert 0.6 * MILLION < len(ids) < 0.8 * MILLION and ids.dtype == np.int64
    assert np.array_equal(ids, sorted(grid.get_node_ids()))  # as a plain sequence, too


def test_node_ids_of_any_grid_sort_as_before_even_flowers_random_64_bit_ones() -> None:
    flower_ids = [2**64 - 5, 3, 2**63 + 1]  # Flower's own grids draw unsigned 64-bit ids

    class Plain:
        def get_node_ids(self) -> list[int]:
            return flower_ids

    assert [int(i) for i in sorted_node_ids(cast(Grid, Plain()))] == sorted(flower_ids)


def test_devices_keep_their_residuals_when_they_spill_to_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge preset keeps an error-feedback residual per device; with no memory for
    any, every residual waits on disk between rounds and the run ends on the same model."""
    at_close: list[tuple[int, int]] = []
    close = DeviceStates.close

    def counting_close(self: DeviceStates) -> None:
        at_close.append((len(self), self.spilled_devices))
        close(self)

    monkeypatch.setattr(DeviceStates, "close", counting_close)
    base = {
        "dataset": "digits",
        "model": "mlp",
        "preset": "edge",
        "num-devices": 12,
        "devices-per-round": 6,
        "rounds": 3,
        "local-epochs": 1,
        "federation.workers": 1,
    }
    in_memory = simulate(load_config(overrides=base))
    spilled = simulate(load_config(overrides={**base, "federation.state_memory_mb": 0}))
    assert in_memory["final_model_sha256"] == spilled["final_model_sha256"]
    # Devices that trained kept a residual: in memory in the first run, on disk in the second.
    (kept, none_spilled), (kept_again, all_spilled) = at_close[0], at_close[-1]
    assert kept > 6 and none_spilled == 0 and kept_again == all_spilled == kept


def test_state_memory_must_not_be_negative() -> None:
    from stamen.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"federation\.state_memory_mb"):
        load_config(overrides={"federation.state_memory_mb": -1})
