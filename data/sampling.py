"""Fixed-size device datasets drawn with a partition's label skew (workload W1).

Splitting 60,000 rows among 10,000 devices leaves six rows each. Throughput
workloads instead give every device the same number of rows, drawn from the
whole training set with the skew the partition scheme implies: a device's
class mix is ``Dirichlet(alpha)`` for ``dirichlet``, ``shards_per_device``
classes for ``shards``, and the set's own mix for ``iid``. Devices may share
rows. Each device's rows depend only on the seed and its id, so any process
can draw them without holding the others'.

Examples:
    >>> by_class = rows_by_class(np.repeat(np.arange(10), 100), num_classes=10)
    >>> config = PartitionConfig(scheme="dirichlet", num_devices=10_000, alpha=0.3)
    >>> rows = sample_device_rows(by_class, config, device=42, size=60)
    >>> rows.shape, bool((np.diff(rows) >= 0).all())
    ((60,), True)
"""

from __future__ import annotations

import numpy as np

from stamen.core.errors import ConfigError
from stamen.data.partition import PartitionConfig, PartitionScheme


def rows_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """The row indices of each class, computed once per dataset.

    Examples:
        >>> [rows.tolist() for rows in rows_by_class(np.array([1, 0, 1, 2]), num_classes=3)]
        [[1], [0, 2], [3]]
    """
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def sample_device_rows(
    by_class: list[np.ndarray], config: PartitionConfig, device: int, size: int
) -> np.ndarray:
    """``size`` sorted row indices for ``device``, drawn with the scheme's label skew.

    Examples:
        >>> by_class = rows_by_class(np.repeat(np.arange(4), 25), num_classes=4)
        >>> config = PartitionConfig(scheme="shards", num_devices=8, shards_per_device=1)
        >>> rows = sample_device_rows(by_class, config, device=3, size=10)
        >>> len(rows), len(np.unique(rows // 25))  # ten rows, all of one class
        (10, 1)
    """
    if config.scheme is PartitionScheme.NATURAL:
        raise ConfigError(
            "data.samples_per_device does not apply to natural partitions: "
            "each real client keeps its own rows"
        )
    if not 0 <= device < config.num_devices:
        raise ConfigError(f"device must be between 0 and {config.num_devices - 1}; got {device}")
    rng = np.random.default_rng([config.seed, 7, device])
    lengths = np.array([len(rows) for rows in by_class], dtype=np.int64)
    sizes = lengths.astype(np.float64)
    num_classes = len(by_class)
    present = sizes > 0
    if config.scheme is PartitionScheme.DIRICHLET:
        mix = rng.dirichlet(np.full(num_classes, config.alpha)) * present
    elif config.scheme is PartitionScheme.SHARDS:
        classes = rng.choice(
            np.flatnonzero(present),
            size=min(config.shards_per_device, int(present.sum())),
            replace=False,
        )
        mix = np.zeros(num_classes)
        mix[classes] = 1.0
    else:
        mix = sizes.copy()
    if mix.sum() <= 0:
        mix = present.astype(np.float64)
    counts = rng.multinomial(size, mix / mix.sum())
    # One call draws every class's rows: the same stream as a call per class, in half the time.
    draws = rng.integers(0, np.repeat(lengths, counts))
    ends = np.cumsum(counts).tolist()
    rows = [
        by_class[c][draws[end - n : end]]
        for c, (n, end) in enumerate(zip(counts.tolist(), ends, strict=True))
        if n
    ]
    return np.sort(np.concatenate(rows))
