"""Simulated fleets: virtual devices on this machine, in-process or on Ray."""

from stamen.simulations.local_grid import LocalGrid
from stamen.simulations.runner import fleet_of, run_on_ray, simulate

__all__ = ["LocalGrid", "fleet_of", "run_on_ray", "simulate"]
