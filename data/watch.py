"""Fixed-length features for seglearn's smartwatch IMU exercise recordings.

Each recording is a variable-length series (947 to 2,618 steps) of six axes:
accelerometer ``ax, ay, az`` and gyroscope ``wx, wy, wz``. A small model on a
watch cannot take raw series of different lengths, so every recording becomes
one row of :data:`WATCH_FEATURES`: for each axis, in this order,

- ``mean``, ``std``, ``min``, ``max``: level and spread of the signal;
- ``p10``, ``median``, ``p90``: the 10th, 50th and 90th percentiles, robust to
  the spikes that ``min`` and ``max`` pick up;
- ``mean_abs_diff``: mean absolute step-to-step change, how jerky the motion is.

That is 6 axes x 8 statistics = 48 features per recording.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WATCH_AXES: tuple[str, ...] = ("ax", "ay", "az", "wx", "wy", "wz")
WATCH_STATISTICS: tuple[str, ...] = (
    "mean",
    "std",
    "min",
    "max",
    "p10",
    "median",
    "p90",
    "mean_abs_diff",
)
WATCH_FEATURES: tuple[str, ...] = tuple(
    f"{axis}_{stat}" for axis in WATCH_AXES for stat in WATCH_STATISTICS
)


def series_features(series: np.ndarray) -> np.ndarray:
    """Return the :data:`WATCH_FEATURES` row (float64) of one ``(T, 6)`` series.

    Examples:
        >>> steps = np.arange(4.0)[:, None].repeat(6, axis=1)
        >>> series_features(steps)[:8].tolist()
        [1.5, 1.118033988749895, 0.0, 3.0, 0.30000000000000004, 1.5, 2.7, 1.0]
    """
    low, median, high = np.percentile(series, [10, 50, 90], axis=0)
    per_stat = np.stack(
        [
            series.mean(axis=0),
            series.std(axis=0),
            series.min(axis=0),
            series.max(axis=0),
            low,
            median,
            high,
            np.abs(np.diff(series, axis=0)).mean(axis=0),
        ],
        axis=1,
    )
    # Rows are axes and columns statistics, so ravel gives axis-major order.
    return per_stat.ravel()


def recordings_to_features(recordings: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the feature rows of many ``(T, 6)`` recordings into ``(N, 48)``."""
    return np.stack([series_features(np.asarray(r, dtype=np.float64)) for r in recordings])
