"""Simulated fleets: virtual devices on this machine, in-process, in worker processes or on Ray.

Names are imported on first use, so that the config layer can read device
profiles (:mod:`stamen.simulations.profiles`) without loading the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stamen.simulations.local_grid import LocalGrid
    from stamen.simulations.profiles import (
        Fleet,
        FleetMix,
        FleetPreset,
        TierProfile,
        build_fleet,
        fleet_mix,
    )
    from stamen.simulations.runner import fleet_of, run_on_ray, simulate
    from stamen.simulations.sim_grid import SimulationGrid

_EXPORTS = {
    "LocalGrid": "stamen.simulations.local_grid",
    "Fleet": "stamen.simulations.profiles",
    "FleetMix": "stamen.simulations.profiles",
    "FleetPreset": "stamen.simulations.profiles",
    "TierProfile": "stamen.simulations.profiles",
    "build_fleet": "stamen.simulations.profiles",
    "fleet_mix": "stamen.simulations.profiles",
    "fleet_of": "stamen.simulations.runner",
    "run_on_ray": "stamen.simulations.runner",
    "simulate": "stamen.simulations.runner",
    "SimulationGrid": "stamen.simulations.sim_grid",
}

__all__ = [
    "Fleet",
    "FleetMix",
    "FleetPreset",
    "LocalGrid",
    "SimulationGrid",
    "TierProfile",
    "build_fleet",
    "fleet_mix",
    "fleet_of",
    "run_on_ray",
    "simulate",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stamen.simulations' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
