"""A virtual device's share of a dataset, looked up by partition id.

A real device brings its own files; a simulated one takes partition
``partition-id`` of a shared dataset, split the same way on every process
because the split depends only on the dataset, the scheme and the seed.
Nothing is held per device: a split is two index arrays for the whole fleet
(:class:`~stamen.data.partition.Partition`), and with ``samples_per_device`` a
device's rows are drawn from its id and the seed when it is asked for them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stamen.config import DataSettings
from stamen.core.errors import ConfigError
from stamen.data import (
    Dataset,
    PartitionConfig,
    load_dataset,
    partition_dataset,
    rows_by_class,
    sample_device_rows,
)


@dataclass(frozen=True)
class FleetData:
    """How a simulated fleet's data is produced: the dataset and its split."""

    data: DataSettings
    num_devices: int
    seed: int

    def partition_config(self) -> PartitionConfig:
        """The partitioner settings this fleet uses."""
        return PartitionConfig(
            scheme=self.data.partition,
            num_devices=self.num_devices,
            alpha=self.data.alpha,
            shards_per_device=self.data.shards_per_device,
            seed=self.seed,
        )


@dataclass(frozen=True)
class LocalData:
    """One device's training data as tensors."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def dataset_of(fleet: FleetData) -> Dataset:
    """The fleet's dataset (cached per process by the loader)."""
    return load_dataset(fleet.data.dataset)


@functools.lru_cache(maxsize=8)
def _partitions(fleet: FleetData) -> Sequence[np.ndarray]:
    return partition_dataset(dataset_of(fleet), fleet.partition_config())


@functools.lru_cache(maxsize=8)
def _rows_by_class(fleet: FleetData) -> list[np.ndarray]:
    dataset = dataset_of(fleet)
    return rows_by_class(dataset.y_train, dataset.num_classes)


def device_rows(fleet: FleetData, partition_id: int) -> np.ndarray:
    """Training-row indices of virtual device ``partition_id``."""
    if not 0 <= partition_id < fleet.num_devices:
        raise ConfigError(
            f"partition-id must be between 0 and {fleet.num_devices - 1}; got {partition_id}"
        )
    if fleet.data.samples_per_device > 0:
        return sample_device_rows(
            _rows_by_class(fleet),
            fleet.partition_config(),
            partition_id,
            fleet.data.samples_per_device,
        )
    return _partitions(fleet)[partition_id]


def device_data(fleet: FleetData, partition_id: int) -> LocalData:
    """Training data of virtual device ``partition_id``."""
    index = device_rows(fleet, partition_id)
    dataset = dataset_of(fleet)
    return LocalData(
        x=torch.from_numpy(np.ascontiguousarray(dataset.x_train[index])),
        y=torch.from_numpy(np.ascontiguousarray(dataset.y_train[index])),
        num_classes=dataset.num_classes,
        input_shape=dataset.input_shape,
    )
