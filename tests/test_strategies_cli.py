"""Selecting strategies from the command line and the config file; the device-facing task."""

from pathlib import Path

import pytest
from flwr.app import ConfigRecord
from typer.testing import CliRunner

from stamen.cli.main import app
from stamen.config import AttackKind, StrategyName, load_config, parse_assignment
from stamen.contract import TrainTask
from stamen.core.errors import ConfigError

runner = CliRunner()


def test_strategies_command_lists_every_strategy_with_a_description() -> None:
    result = runner.invoke(app, ["strategies"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in StrategyName:
        assert f" {name.value} " in result.output
    assert "Blanchard et al. 2017" in result.output and "Nguyen et al. 2022" in result.output


def test_strategy_flag_and_config_file_select_a_strategy(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--strategy", "multi-krum", "--dry-run"])
    assert result.exit_code == 0
    assert 'name = "multi-krum"' in result.output
    config_file = tmp_path / "run.toml"
    config_file.write_text('[strategy]\nname = "fedbuff"\nbuffer_size = 7\n')
    config = load_config(config_file)
    assert config.strategy.name is StrategyName.FEDBUFF and config.strategy.buffer_size == 7
    assert load_config(config_file, {"strategy": "median"}).strategy.name is StrategyName.MEDIAN


def test_unknown_strategy_is_one_clear_line() -> None:
    result = runner.invoke(app, ["simulate", "--strategy", "fedsgd"])
    assert result.exit_code == 2
    assert "strategy.name must be one of fedavg, fedprox" in " ".join(result.output.split())
    with pytest.raises(ConfigError, match=r"attack\.fraction must be in"):
        load_config(overrides={"attack.fraction": 1.5})


def test_proximal_mu_is_optional_on_the_wire() -> None:
    record = TrainTask(proximal_mu=0.5).to_config_record()
    assert TrainTask.from_config_record(record).proximal_mu == 0.5
    del record["stamen.proximal-mu"]  # a task from a server that predates FedProx
    assert TrainTask.from_config_record(record).proximal_mu == 0.0
    record["stamen.proximal-mu"] = -1.0
    with pytest.raises(ConfigError, match="proximal-mu' must be >= 0"):
        TrainTask.from_config_record(ConfigRecord(dict(record)))


def test_set_attack_kind_nan_means_the_name_not_a_float() -> None:
    for text, kind in (("attack.kind=nan", AttackKind.NAN), ("attack.kind=inf", AttackKind.INF)):
        key, value = parse_assignment(text)
        assert load_config(overrides={key: value}).attack.kind is kind
