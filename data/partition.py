"""Split training rows across simulated devices: IID, Dirichlet, shards, natural.

Every scheme returns one sorted ``int64`` index array per device, never an
empty one, and is a pure function of the labels (or client ids) and the
:class:`PartitionConfig`: the same config gives identical partitions in every
process, so a simulation's workers agree on who holds what. The arrays are views
into one :class:`Partition` (all rows grouped by device, and where each device's
group starts): 8 bytes per row and per device, with no Python object per device
until one is looked up.

- ``iid``: shuffle, then cut into ``num_devices`` near-equal parts.
- ``dirichlet``: for each class, draw device shares from
  ``Dirichlet(alpha, ..., alpha)`` and deal that class's rows accordingly
  (Yurochkin et al., 2019). Small ``alpha`` gives few classes per device and
  uneven sizes. Devices left empty each take one row from the largest device.
- ``shards``: sort rows by label, cut them into
  ``num_devices * shards_per_device`` shards and deal each device
  ``shards_per_device`` random shards, so it sees about that many classes
  (McMahan et al., 2017).
- ``natural``: one device per distinct client id, in order of first
  appearance. ``num_devices`` must equal the number of distinct ids; Stamen
  does not merge or split real clients behind the user's back.

IID, Dirichlet and shards use every training row exactly once.
"""

from __future__ import annotations

import enum
import functools
import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from stamen.core.errors import ConfigError, DataError
from stamen.data.dataset import Dataset


class PartitionScheme(enum.StrEnum):
    """How training rows are spread over devices."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"
    NATURAL = "natural"


@dataclass(frozen=True)
class PartitionConfig:
    """Which partition scheme to use, over how many devices, with which seed.

    ``alpha`` only matters for ``dirichlet`` and ``shards_per_device`` only for
    ``shards``; ``natural`` ignores the seed. ``scheme`` may be given as its
    string value, as read from TOML or the CLI.

    Examples:
        >>> PartitionConfig(scheme="shards", num_devices=50).scheme
        <PartitionScheme.SHARDS: 'shards'>
        >>> PartitionConfig(alpha=0)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: alpha must be a finite number > 0; got 0
    """

    scheme: PartitionScheme = PartitionScheme.DIRICHLET
    num_devices: int = 100
    alpha: float = 0.3
    shards_per_device: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "scheme", PartitionScheme(self.scheme))
        except ValueError:
            allowed = ", ".join(s.value for s in PartitionScheme)
            raise ConfigError(f"scheme must be one of {allowed}; got {self.scheme!r}") from None
        _require_int(self.num_devices, "num_devices", minimum=1)
        _require_int(self.shards_per_device, "shards_per_device", minimum=1)
        _require_int(self.seed, "seed", minimum=0)
        alpha = self.alpha
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
            or alpha <= 0
        ):
            raise ConfigError(f"alpha must be a finite number > 0; got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))


def _require_int(value: object, field: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}; got {value!r}")


class Partition(Sequence[np.ndarray]):
    """Every device's row indices, held as two arrays rather than an array per device.

    ``rows`` lists the rows grouped by device, each group sorted; device ``i`` holds
    ``rows[bounds[i]:bounds[i + 1]]``, a read-only view made when it is looked up.

    Examples:
        >>> parts = Partition(np.array([4, 0, 2, 3]), np.array([0, 1, 4]))
        >>> len(parts), parts[1].tolist(), [len(p) for p in parts]
        (2, [0, 2, 3], [1, 3])
    """

    def __init__(self, rows: np.ndarray, bounds: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.rows.flags.writeable = False
        self.bounds.flags.writeable = False

    def __len__(self) -> int:
        return int(self.bounds.shape[0]) - 1

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        devices = len(self)
        if not -devices <= index < devices:
            raise IndexError(f"device {index} out of range for {devices} devices")
        index %= devices
        return self.rows[self.bounds[index] : self.bounds[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes the two index arrays hold."""
        return int(self.rows.nbytes + self.bounds.nbytes)


def partition(
    labels: np.ndarray, config: PartitionConfig, client_ids: np.ndarray | None = None
) -> Partition:
    """Return one sorted index array per device into ``labels``.

    ``client_ids`` (one per row) is required by the ``natural`` scheme and
    ignored by the others. Raises ``DataError`` when the split is impossible,
    for example more devices than rows.

    Examples:
        >>> labels = np.repeat(np.arange(4), 5)
        >>> parts = partition(labels, PartitionConfig(scheme="shards", num_devices=4,
        ...                                           shards_per_device=1))
        >>> [np.unique(labels[p]).tolist() for p in parts]
        [[3], [2], [0], [1]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"labels must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}"
        )
    rng = np.random.default_rng(config.seed)
    devices = config.num_devices
    if config.scheme is PartitionScheme.NATURAL:
        owner = _natural_owner(labels, devices, client_ids)
    else:
        if devices > len(labels):
            raise DataError(
                f"cannot give each of {devices} devices a sample: "
                f"there are only {len(labels)} training rows; to simulate more devices than "
                "rows, give each its own draw of rows with data.samples_per_device "
                "(--samples-per-device)"
            )
        if config.scheme is PartitionScheme.IID:
            owner = _iid_owner(len(labels), devices, rng)
        elif config.scheme is PartitionScheme.SHARDS:
            owner = _shards_owner(labels, devices, config.shards_per_device, rng)
        else:
            owner = _dirichlet_owner(labels, devices, config.alpha, rng)
    return _group_by_owner(owner, devices)


@functools.lru_cache(maxsize=32)
def _partition_dataset_cached(dataset: Dataset, config: PartitionConfig) -> Partition:
    client_ids = dataset.client_train if config.scheme is PartitionScheme.NATURAL else None
    if config.scheme is PartitionScheme.NATURAL and client_ids is None:
        raise DataError(
            f"the natural partition needs client ids, but dataset {dataset.name!r} "
            "has no client_train; use iid, dirichlet or shards"
        )
    return partition(dataset.y_train, config, client_ids)


def partition_dataset(dataset: Dataset, config: PartitionConfig) -> Partition:
    """Partition ``dataset``'s training rows, cached per dataset and config.

    Uses ``dataset.client_train`` for the ``natural`` scheme. The returned
    partition is shared between callers, so its index arrays are read-only.

    Examples:
        >>> from stamen.data import load_dataset
        >>> ds = load_dataset("watch")
        >>> parts = partition_dataset(ds, PartitionConfig(scheme="natural", num_devices=10))
        >>> sum(len(p) for p in parts) == ds.num_train
        True
    """
    return _partition_dataset_cached(dataset, config)


def label_histogram(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Return a ``(devices, classes)`` array counting each device's labels.

    Examples:
        >>> label_histogram(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])], 3)
        array([[1, 1, 0],
               [0, 1, 1]])
    """
    labels = np.asarray(labels)
    return np.stack(
        [np.bincount(labels[part], minlength=num_classes)[:num_classes] for part in parts]
    ).astype(np.int64)


def _group_by_owner(owner: np.ndarray, devices: int) -> Partition:
    """Turn a device id per row into sorted row indices per device."""
    # A stable sort keeps row indices ascending within each device, and avoids
    # a devices x rows scan that would be slow for 10,000 devices.
    order = np.argsort(owner, kind="stable").astype(np.int64)
    bounds = np.zeros(devices + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=devices), out=bounds[1:])
    return Partition(order, bounds)


def _iid_owner(rows: int, devices: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle, then cut into near-equal parts: the first ``rows % devices`` one row longer."""
    size, longer = divmod(rows, devices)
    owner = np.empty(rows, dtype=np.int64)
    owner[rng.permutation(rows)] = np.repeat(
        np.arange(devices), np.where(np.arange(devices) < longer, size + 1, size)
    )
    return owner


def _shards_owner(
    labels: np.ndarray, devices: int, per_device: int, rng: np.random.Generator
) -> np.ndarray:
    num_shards = devices * per_device
    if num_shards > len(labels):
        raise DataError(
            f"the shards partition needs num_devices * shards_per_device = {num_shards} "
            f"shards of at least one row, but there are only {len(labels)} training rows"
        )
    # Shuffle before the stable sort so that which rows of a class land in
    # which shard depends on the seed.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    size, longer = divmod(len(labels), num_shards)
    shard_sizes = np.where(np.arange(num_shards) < longer, size + 1, size)
    dealt = rng.permutation(num_shards).reshape(devices, per_device)
    device_of_shard = np.empty(num_shards, dtype=np.int64)
    device_of_shard[dealt] = np.arange(devices)[:, None]
    owner = np.empty(len(labels), dtype=np.int64)
    owner[by_label] = np.repeat(device_of_shard, shard_sizes)
    return owner


def _dirichlet_owner(
    labels: np.ndarray, devices: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    owner = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(devices, alpha))
        counts = rng.multinomial(len(rows), shares / shares.sum())
        owner[rows] = np.repeat(np.arange(devices), counts)
    _fill_empty_devices(owner, devices, rng)
    return owner


def _fill_empty_devices(owner: np.ndarray, devices: int, rng: np.random.Generator) -> None:
    """Move one row from the currently largest device to each empty device."""
    sizes = np.bincount(owner, minlength=devices)
    empty = np.flatnonzero(sizes == 0)
    if not len(empty):
        return
    # Max-heap of (size, device): always take from whichever device is largest now.
    heap = [(-int(size), int(device)) for device, size in enumerate(sizes) if size > 0]
    heapq.heapify(heap)
    donors = []
    for _ in empty:
        negative_size, donor = heapq.heappop(heap)
        donors.append(donor)
        heapq.heappush(heap, (negative_size + 1, donor))
    donor_ids, taken = np.unique(donors, return_counts=True)
    receivers = iter(empty)
    for donor, count in zip(donor_ids, taken, strict=True):
        for row in rng.choice(np.flatnonzero(owner == donor), size=count, replace=False):
            owner[row] = next(receivers)


def _natural_owner(labels: np.ndarray, devices: int, client_ids: np.ndarray | None) -> np.ndarray:
    if client_ids is None:
        raise DataError("the natural partition needs client ids (one per training row)")
    client_ids = np.asarray(client_ids)
    if client_ids.shape != labels.shape:
        raise DataError(
            f"client ids have shape {client_ids.shape} but there are {len(labels)} training rows"
        )
    _, first_row, client_of_row = np.unique(client_ids, return_index=True, return_inverse=True)
    if len(first_row) != devices:
        raise DataError(
            f"the natural partition has one device per client and the data has "
            f"{len(first_row)} clients; set num_devices to {len(first_row)} (got {devices})"
        )
    # np.unique numbers clients in sorted order; renumber by first appearance.
    device_of_client = np.empty(len(first_row), dtype=np.int64)
    device_of_client[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
    return device_of_client[client_of_row]
