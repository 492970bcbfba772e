"""Defaults that fit the dataset follow the documented rule, and explicit settings win."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stamen.cli.main import app
from stamen.config import from_run_config, load_config, to_run_config
from stamen.config.derived import DERIVED_KEYS
from stamen.data import dataset_facts, dataset_names

runner = CliRunner()


@pytest.mark.parametrize("name", dataset_names())
def test_every_builtin_gets_the_rule_s_fleet_and_local_steps(name: str) -> None:
    facts = dataset_facts(name)
    config = load_config(overrides={"dataset": name})
    fed, training = config.federation, config.training

    if facts.num_clients:
        assert config.data.partition.value == "natural"
        assert fed.num_devices == facts.num_clients
    else:
        assert config.data.partition.value == "dirichlet"
        assert fed.num_devices == max(1, min(100, facts.num_train // 100))
    assert fed.devices_per_round == min(10, fed.num_devices)
    rows = facts.num_train // fed.num_devices
    assert training.batch_size == min(20, math.ceil(rows / 5))
    steps_per_epoch = math.ceil(rows / training.batch_size)
    # The fewest epochs that give every device at least 30 SGD steps a round.
    assert training.local_epochs * steps_per_epoch >= 30
    assert (training.local_epochs - 1) * steps_per_epoch < 30
    assert training.model.value == ("lenet" if facts.images else "mlp")
    assert training.lr == 0.05


def test_mnist_keeps_the_fixed_fleet_its_benchmarks_ran() -> None:
    config = load_config()
    assert (config.federation.num_devices, config.federation.devices_per_round) == (100, 10)
    assert (config.training.batch_size, config.training.local_epochs) == (20, 1)
    assert (config.data.partition.value, config.training.model.value) == ("dirichlet", "lenet")


def test_digits_no_longer_spreads_over_a_hundred_devices_of_one_step_each() -> None:
    config = load_config(overrides={"preset": "fp32", "dataset": "digits", "rounds": 5})
    rows = 1437 // config.federation.num_devices
    assert rows >= 100
    assert config.training.local_epochs * math.ceil(rows / config.training.batch_size) >= 30


EXPLICIT = {
    "data.partition": "iid",
    "federation.num_devices": 30,
    "federation.devices_per_round": 3,
    "training.batch_size": 7,
    "training.local_epochs": 2,
    "training.model": "mlp",
}


@pytest.mark.parametrize("key", DERIVED_KEYS)
@pytest.mark.parametrize("dataset", ["digits", "watch", "heart-disease"])
def test_an_explicit_setting_always_wins_over_the_rule(key: str, dataset: str) -> None:
    value = EXPLICIT[key]
    config = load_config(overrides={"dataset": dataset, key: value})
    section, _, name = key.partition(".")
    assert str(getattr(getattr(config, section), name)) == str(value)


def test_the_rule_follows_what_the_user_set() -> None:
    # 7 devices of digits hold 205 rows: 11 batches of 20, so 3 epochs reach 30 steps.
    config = load_config(overrides={"dataset": "digits", "num-devices": 7})
    assert config.federation.devices_per_round == 7
    assert (config.training.batch_size, config.training.local_epochs) == (20, 3)
    # A batch of 50 gives 5 steps an epoch: 6 epochs.
    config = load_config(overrides={"dataset": "digits", "num-devices": 7, "batch-size": 50})
    assert config.training.local_epochs == 6
    # A fleet size other than the hospitals' count is not the natural partition.
    config = load_config(overrides={"dataset": "heart-disease", "num-devices": 8})
    assert config.data.partition.value == "dirichlet"
    # Devices that draw their own rows: the fleet is not bounded by the data.
    config = load_config(overrides={"data.samples_per_device": 60})
    assert config.federation.num_devices == 100
    assert (config.training.batch_size, config.training.local_epochs) == (12, 6)


def test_a_toml_file_and_flower_s_run_config_win_too(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[data]\ndataset = "digits"\n[federation]\nnum_devices = 50\n[training]\nlocal_epochs = 1\n'
    )
    config = load_config(path)
    assert (config.federation.num_devices, config.training.local_epochs) == (50, 1)
    assert load_config(path, {"num-devices": 20}).federation.num_devices == 20
    # Flower's run config; a resolved config round-trips unchanged (the devices rebuild it).
    assert from_run_config({"dataset": "digits", "num-devices": 50}).federation.num_devices == 50
    assert from_run_config(to_run_config(config)) == config


def test_dry_run_shows_the_derived_values_and_the_flags_that_replace_them() -> None:
    derived = runner.invoke(app, ["simulate", "--dataset", "digits", "--dry-run"])
    assert derived.exit_code == 0
    assert "num_devices = 14" in derived.output
    assert "local_epochs = 5" in derived.output
    given = runner.invoke(
        app, ["simulate", "--dataset", "digits", "--num-devices", "100", "--dry-run"]
    )
    assert "num_devices = 100" in given.output
    assert "batch_size = 3" in given.output
