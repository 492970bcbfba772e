"""Simulated fleets: virtual devices on this machine, in-process, in worker processes or on Ray.

Names are imported on first use, so that importing one grid does not load the
others' runtimes. :func:`stamen.launch.simulate` runs a federation on them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stamen.simulations.local_grid import LocalGrid
    from stamen.simulations.profiles import Fleet, build_fleet
    from stamen.simulations.sim_grid import SimulationGrid

_EXPORTS = {
    "LocalGrid": "stamen.simulations.local_grid",
    "Fleet": "stamen.simulations.profiles",
    "build_fleet": "stamen.simulations.profiles",
    "SimulationGrid": "stamen.simulations.sim_grid",
}

__all__ = [
    "Fleet",
    "LocalGrid",
    "SimulationGrid",
    "build_fleet",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stamen.simulations' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
