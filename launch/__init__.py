"""Launching a run: a simulation on one of the simulation grids, with its reporters.

This layer sits above the grids: it picks a grid (:mod:`stamen.simulations`)
and runs the server app (:mod:`stamen.server`) on it.
"""

from stamen.launch.simulate import fleet_of, run_on_ray, simulate

__all__ = ["fleet_of", "run_on_ray", "simulate"]
