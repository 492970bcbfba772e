"""The grid's node ids as one sorted array, whatever the grid: how a round samples devices
without a Python object per device."""

from __future__ import annotations

import numpy as np
from flwr.serverapp import Grid


def sorted_node_ids(grid: Grid) -> np.ndarray:
    """The grid's node ids, ascending, as one array.

    A grid that hands its ids as an array (the simulation grid's million devices) is
    sorted without a Python object per device.
    """
    ids = grid.get_node_ids()
    if hasattr(ids, "__array__"):
        return np.sort(np.asarray(ids))
    # Flower's node ids are unsigned 64-bit: its own grids draw them at random.
    return np.array(sorted(ids), dtype=np.uint64)
