"""Build a :class:`StamenConfig` from presets, TOML files, flags and Flower run configs.

Precedence, lowest first: dataclass defaults, the preset, the TOML file, then
explicit overrides (CLI flags, ``--set section.key=value``, or Flower's
``run_config``). The settings that depend on the dataset (fleet size, devices per
round, batch size, local epochs, partition, model) that none of these set follow
from the dataset by the rule in :mod:`stamen.config.derived`. Everything is parsed
here, once, at the boundary; the rest of Stamen only sees typed dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stamen.config.derived import DERIVED_KEYS, derive
from stamen.config.fleet_settings import tier_share
from stamen.config.settings import SECTION_TYPES, DataSettings, Preset, StamenConfig
from stamen.core.errors import ConfigError
from stamen.data import PartitionScheme, dataset_facts

PRESETS: dict[Preset, dict[str, dict[str, Any]]] = {
    Preset.EDGE: {
        "qat": {"enabled": True, "weight_bits": 8, "activation_bits": 8},
        "pruning": {"target_sparsity": 0.5, "method": "global"},
        "uplink": {
            "topk_ratio": 0.045,
            "values": "q4",
            "error_feedback": True,
            "lossless": "zlib",
        },
        "downlink": {"values": "q8", "lossless": "zlib"},
    },
    Preset.PRIVATE_EDGE: {
        "qat": {"enabled": True, "weight_bits": 8, "activation_bits": 8},
        "pruning": {"target_sparsity": 0.5, "method": "global"},
        "uplink": {"error_feedback": True},
        "downlink": {"values": "q8", "lossless": "zlib"},
        "privacy": {"secure_aggregation": True, "modulus_bits": 11, "coordinate_ratio": 0.25},
    },
    Preset.FP32: {
        "qat": {"enabled": False},
        "pruning": {"target_sparsity": 0.0},
        "uplink": {
            "topk_ratio": 1.0,
            "values": "fp32",
            "error_feedback": False,
            "lossless": "none",
        },
        "downlink": {"values": "fp32", "lossless": "none"},
    },
}

ALIASES: dict[str, str] = {
    "dataset": "data.dataset",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "shards-per-device": "data.shards_per_device",
    "num-devices": "federation.num_devices",
    "devices-per-round": "federation.devices_per_round",
    "rounds": "federation.rounds",
    "num-server-rounds": "federation.rounds",
    "seed": "federation.seed",
    "backend": "federation.backend",
    "model": "training.model",
    "width": "training.width",
    "local-epochs": "training.local_epochs",
    "batch-size": "training.batch_size",
    "lr": "training.lr",
    "strategy": "strategy.name",
}
"""Short names accepted in Flower's run config and as CLI flags."""


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> StamenConfig:
    """Resolve a config from an optional TOML file and ``{"section.key": value}`` overrides.

    ``defaults`` sit between the preset and the file: a command's own defaults
    (``stamen server`` gives devices a deadline) that the file and flags still override.

    Examples:
        >>> cfg = load_config(overrides={"preset": "fp32", "federation.rounds": 3})
        >>> cfg.federation.rounds, cfg.uplink.values.value
        (3, 'fp32')
        >>> load_config(defaults={"federation.deadline": 120.0}).federation.deadline
        120.0
    """
    flat = {canonical_key(key): value for key, value in (defaults or {}).items()}
    flat.update(flatten(read_toml(path) if path is not None else {}))
    for key, value in (overrides or {}).items():
        flat[canonical_key(key)] = value
    return build_config(flat)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file, turning every failure into one clear line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def from_run_config(run_config: Mapping[str, Any]) -> StamenConfig:
    """Parse Flower's flat, stringly-typed ``run_config`` into a :class:`StamenConfig`.

    Examples:
        >>> config = from_run_config({"num-server-rounds": 5, "qat.enabled": "false"})
        >>> config.federation.rounds, config.qat.enabled
        (5, False)
    """
    return build_config({canonical_key(key): value for key, value in run_config.items()})


def to_run_config(config: StamenConfig) -> dict[str, bool | int | float | str]:
    """Flatten a config into Flower ``run_config`` form; ``from_run_config`` inverts it.

    Examples:
        >>> config = load_config(overrides={"rounds": 4})
        >>> run_config = to_run_config(config)
        >>> run_config["federation.rounds"], from_run_config(run_config) == config
        (4, True)
    """
    flat = flatten(config_to_dict(config))
    return {key: value for key, value in flat.items() if value is not None}


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` from ``--set``; the value is read as a TOML literal.

    Examples:
        >>> parse_assignment("uplink.topk-ratio=0.05"), parse_assignment("dataset=digits")
        (('uplink.topk_ratio', 0.05), ('data.dataset', 'digits'))
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value; got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return canonical_key(key.strip()), value


def canonical_key(key: str) -> str:
    """Map aliases and dashed spellings onto ``section.field`` keys.

    Examples:
        >>> canonical_key("num-server-rounds"), canonical_key("uplink.topk-ratio")
        ('federation.rounds', 'uplink.topk_ratio')
    """
    if key in ALIASES:
        return ALIASES[key]
    return key.replace("-", "_")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def build_config(flat: Mapping[str, Any]) -> StamenConfig:
    """Build and validate a config from flat ``section.field`` keys over the preset."""
    preset = coerce("preset", flat.get("preset", Preset.EDGE.value), Preset)
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_TYPES}
    for section, values in PRESETS[preset].items():
        sections[section].update(values)
    tiers: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "preset":
            continue
        if key.startswith(TIERS_PREFIX):
            name, _, field = key[len(TIERS_PREFIX) :].rpartition(".")
            if not name:
                raise ConfigError(f"{key!r}: custom tiers are tables, [fleet.tiers.NAME]")
            tiers.setdefault(name, {})[field] = value
            continue
        section, _, name = key.partition(".")
        if section not in SECTION_TYPES or not name:
            allowed = ", ".join(["preset", *SECTION_TYPES])
            raise ConfigError(f"unknown config key {key!r}; sections are: {allowed}")
        sections[section][name] = value
    fill_derived_defaults(sections)
    built = {
        "federation": build_section(
            "federation", SECTION_TYPES["federation"], sections["federation"]
        )
    }
    if "ramp_rounds" not in sections["pruning"]:
        # Reach the target halfway through the run, so the second half recovers accuracy.
        sections["pruning"]["ramp_rounds"] = max(1, built["federation"].rounds // 2)
    if tiers:
        sections["fleet"].setdefault("preset", "custom")
        sections["fleet"]["tiers"] = tuple(tier_share(n, v) for n, v in tiers.items())
    built.update(
        {
            name: build_section(name, SECTION_TYPES[name], values)
            for name, values in sections.items()
            if name != "federation"
        }
    )
    return StamenConfig(preset=preset, **built)


def fill_derived_defaults(sections: dict[str, dict[str, Any]]) -> None:
    """Set each of :data:`~stamen.config.derived.DERIVED_KEYS` that nothing set, by the rule.

    The values already in ``sections`` (preset, file, flags) are kept and feed the rule.
    """
    if all(key.partition(".")[2] in sections[key.partition(".")[0]] for key in DERIVED_KEYS):
        return

    def given(section: str, name: str, annotation: Any) -> Any:
        value = sections[section].get(name)
        return None if value is None else coerce(f"{section}.{name}", value, annotation)

    dataset = given("data", "dataset", str) or DataSettings().dataset
    partition = given("data", "partition", PartitionScheme)
    derived = derive(
        dataset_facts(dataset),
        partition=None if partition is None else partition.value,
        num_devices=given("federation", "num_devices", int),
        devices_per_round=given("federation", "devices_per_round", int),
        samples_per_device=given("data", "samples_per_device", int) or 0,
        batch_size=given("training", "batch_size", int),
    )
    for key, value in derived.as_flat().items():
        section, _, name = key.partition(".")
        sections[section].setdefault(name, value)


TIERS_PREFIX = "fleet.tiers."
"""Flat keys of custom tier tables: ``fleet.tiers.NAME.FIELD``."""


def build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    """Build one section dataclass, naming the key in every error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(f"unknown key '{section}.{name}'; allowed: {allowed}")
        kwargs[name] = coerce(f"{section}.{name}", value, hints[name])
    try:
        return cls(**kwargs)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(f"{section}.") else f"{section}.{message}"
        ) from None


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation, converting where it is lossless."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None:
            return None
        annotation = options[0]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [member.value for member in annotation]
        if isinstance(value, annotation):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # `--set attack.kind=nan` reads as a TOML float; the name was meant
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return annotation(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false; got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be a whole number; got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number; got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string; got {value!r}")
    return value


def config_to_dict(config: StamenConfig) -> dict[str, Any]:
    """A JSON- and TOML-ready nested dict of a config."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    result: dict[str, Any] = {"preset": config.preset.value}
    for name in SECTION_TYPES:
        result[name] = plain(getattr(config, name))
    result["fleet"]["tiers"] = {
        tier.profile.name: {
            "share": tier.share,
            **{k: v for k, v in plain(tier.profile).items() if k != "name"},
        }
        for tier in config.fleet.tiers
    }
    return result
