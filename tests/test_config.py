"""Config resolution: presets, TOML, overrides, Flower run configs, and clear errors."""

from pathlib import Path

import pytest

from stamen.config import (
    AttackKind,
    AttackSettings,
    Backend,
    DataSettings,
    DistillSettings,
    FederationSettings,
    FleetPreset,
    FleetSettings,
    Preset,
    StamenConfig,
    StrategyName,
    StrategySettings,
    TrainingSettings,
    UnlabelledSource,
    from_run_config,
    load_config,
    parse_assignment,
    to_run_config,
)
from stamen.core.errors import ConfigError
from stamen.data import PartitionScheme
from stamen.models import ModelName


def test_edge_is_the_default_preset_with_full_compression() -> None:
    config = load_config()
    assert config.preset is Preset.EDGE
    assert config.qat.enabled and config.qat.weight_bits == 8
    assert config.pruning.target_sparsity == 0.5
    assert config.uplink.error_feedback and config.uplink.topk_ratio < 1
    assert config.uplink.values.value == "q4"
    assert config.downlink.values.value == "q8"
    assert config.federation.backend is Backend.LOCAL


def test_fp32_preset_is_plain_fedavg() -> None:
    config = load_config(overrides={"preset": "fp32"})
    assert not config.qat.enabled
    assert config.pruning.target_sparsity == 0.0
    assert config.uplink.topk_ratio == 1.0 and config.uplink.values.value == "fp32"
    assert config.downlink.values.value == "fp32"


def test_toml_overrides_preset_and_flags_override_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "edge"\n[uplink]\ntopk_ratio = 0.05\n[federation]\nrounds = 7\nnum_devices = 20\n'
    )
    config = load_config(path, {"federation.rounds": 3})
    assert config.uplink.topk_ratio == 0.05  # file beats preset
    assert config.uplink.values.value == "q4"  # preset still fills the rest
    assert config.federation.rounds == 3  # flag beats file
    assert config.federation.num_devices == 20


def test_pruning_ramp_defaults_to_half_the_rounds() -> None:
    assert load_config(overrides={"rounds": 30}).pruning.ramp_rounds == 15


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.partition": "random"},
            "data.partition must be one of iid, dirichlet, shards, natural; got 'random'",
        ),
        ({"preset": "tiny"}, "preset must be one of edge, fp32, private-edge; got 'tiny'"),
        ({"uplink.values": "q3"}, "uplink.values must be one of fp32, fp16, q8, q4, q2"),
        ({"federation.devices_per_round": 500}, "federation.devices_per_round must be between"),
        ({"training.lr": -1.0}, "training.lr must be > 0"),
        ({"training.epochs": 2}, "unknown key 'training.epochs'; allowed: model, width"),
        ({"nonsense.key": 1}, "unknown config key 'nonsense.key'"),
        ({"federation.rounds": "ten"}, "federation.rounds must be a whole number; got 'ten'"),
        ({"qat.weight_bits": 3}, "qat.weight_bits"),
        ({"attack.scale": 0}, "attack.scale must be > 0; got 0.0"),
        ({"attack.scale": -2.5}, "attack.scale must be > 0; got -2.5"),
        ({"attack.fraction": 1.5}, "attack.fraction must be in [0, 1]; got 1.5"),
    ],
)
def test_invalid_values_name_the_key_and_allowed_values(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_run_config_round_trip_is_lossless() -> None:
    config = load_config(
        overrides={"preset": "edge", "dataset": "digits", "rounds": 4, "uplink.topk_ratio": 0.02}
    )
    assert from_run_config(to_run_config(config)) == config


def test_flower_run_config_accepts_short_and_dashed_keys() -> None:
    config = from_run_config(
        {"num-server-rounds": 5, "dataset": "digits", "uplink.topk-ratio": 0.1, "preset": "fp32"}
    )
    assert config.federation.rounds == 5
    assert config.data.dataset == "digits"
    assert config.uplink.topk_ratio == 0.1


def test_set_assignments_parse_toml_literals() -> None:
    assert parse_assignment("uplink.topk_ratio=0.05") == ("uplink.topk_ratio", 0.05)
    assert parse_assignment("qat.enabled=false") == ("qat.enabled", False)
    assert parse_assignment("data.dataset=npz:/tmp/x.npz") == ("data.dataset", "npz:/tmp/x.npz")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_assignment("uplink.topk_ratio")


def test_a_bad_attack_scale_is_rejected_when_built_directly() -> None:
    with pytest.raises(ConfigError) as info:
        AttackSettings(kind=AttackKind.SCALE, scale=0.0)
    assert str(info.value) == "attack.scale must be > 0; got 0.0"


ENUM_FIELDS = [
    (DataSettings, "partition", PartitionScheme.IID, "data.partition"),
    (FederationSettings, "backend", Backend.RAY, "federation.backend"),
    (TrainingSettings, "model", ModelName.MLP, "training.model"),
    (StrategySettings, "name", StrategyName.KRUM, "strategy.name"),
    (AttackSettings, "kind", AttackKind.SIGN_FLIP, "attack.kind"),
    (DistillSettings, "source", UnlabelledSource.HOLDOUT, "distill.source"),
    (FleetSettings, "preset", FleetPreset.IOT, "fleet.preset"),
    (StamenConfig, "preset", Preset.FP32, "preset"),
]


@pytest.mark.parametrize(("cls", "field", "member", "key"), ENUM_FIELDS)
def test_settings_built_in_python_turn_strings_into_enum_members(
    cls: type, field: str, member: object, key: str
) -> None:
    settings = cls(**{field: str(member)})
    assert getattr(settings, field) is member


@pytest.mark.parametrize(("cls", "field", "member", "key"), ENUM_FIELDS)
def test_settings_built_in_python_reject_an_unknown_choice_naming_the_key(
    cls: type, field: str, member: object, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**{field: "bogus"})
    assert str(info.value).startswith(f"{key} must be one of ")
    assert str(info.value).endswith("; got 'bogus'")


def test_an_attack_named_by_string_none_is_inactive() -> None:
    assert not AttackSettings(kind="none").active
    assert AttackSettings(kind="sign-flip").active
