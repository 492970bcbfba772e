"""Typed configuration: parsed once at the boundary, frozen and validated.

``load_config`` (TOML file plus overrides) and ``from_run_config`` (Flower's run config)
build a :class:`StamenConfig`, one frozen section dataclass per TOML table; ``str`` enums
name every choice. Settings classes elsewhere reject bad values with ``require``.

Examples:
    >>> from stamen.config import load_config
    >>> load_config(overrides={"preset": "edge"}).qat.enabled
    True
"""

from stamen.config.attack_settings import AttackKind, AttackSettings
from stamen.config.checks import require
from stamen.config.defense_settings import DefenseSettings
from stamen.config.distill_settings import DistillSettings, UnlabelledSource
from stamen.config.fleet_settings import FleetSettings
from stamen.config.loading import (
    canonical_key,
    from_run_config,
    load_config,
    parse_assignment,
    to_run_config,
)
from stamen.config.privacy_settings import PrivacyMode, PrivacySettings
from stamen.config.settings import (
    Backend,
    DataSettings,
    FederationSettings,
    Preset,
    QATSettings,
    StamenConfig,
    StrategyName,
    StrategySettings,
    TorchDevice,
    TrainingSettings,
)
from stamen.config.tiers import FleetMix, FleetPreset, TierProfile, fleet_mix

__all__ = [
    "AttackKind",
    "AttackSettings",
    "Backend",
    "DataSettings",
    "DefenseSettings",
    "DistillSettings",
    "FederationSettings",
    "FleetMix",
    "FleetPreset",
    "FleetSettings",
    "Preset",
    "PrivacyMode",
    "PrivacySettings",
    "QATSettings",
    "StamenConfig",
    "StrategyName",
    "StrategySettings",
    "TierProfile",
    "TorchDevice",
    "TrainingSettings",
    "UnlabelledSource",
    "canonical_key",
    "fleet_mix",
    "from_run_config",
    "load_config",
    "parse_assignment",
    "require",
    "to_run_config",
]
