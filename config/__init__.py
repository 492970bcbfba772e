"""Typed configuration: parsed once at the boundary, frozen and validated.

Examples:
    >>> from stamen.config import load_config
    >>> load_config(overrides={"preset": "edge"}).qat.enabled
    True
"""

from stamen.config.distill_settings import DistillSettings, UnlabelledSource
from stamen.config.loading import (
    PRESETS,
    from_run_config,
    load_config,
    parse_assignment,
    to_run_config,
)
from stamen.config.settings import (
    AttackKind,
    AttackSettings,
    Backend,
    DataSettings,
    FederationSettings,
    Preset,
    QATSettings,
    StamenConfig,
    StrategyName,
    StrategySettings,
    TrainingSettings,
)
from stamen.config.tiers import FleetMix, FleetPreset, TierProfile, builtin_tier, fleet_mix

__all__ = [
    "PRESETS",
    "AttackKind",
    "AttackSettings",
    "Backend",
    "DataSettings",
    "DistillSettings",
    "FederationSettings",
    "FleetMix",
    "FleetPreset",
    "Preset",
    "QATSettings",
    "StamenConfig",
    "StrategyName",
    "StrategySettings",
    "TierProfile",
    "TrainingSettings",
    "UnlabelledSource",
    "builtin_tier",
    "fleet_mix",
    "from_run_config",
    "load_config",
    "parse_assignment",
    "to_run_config",
]
