"""Offline datasets and partitioners for simulated device fleets.

Load a prepared dataset by name (or ``npz:PATH``), then split its training
rows over devices:

Examples:
    >>> from stamen.data import PartitionConfig, load_dataset, partition_dataset
    >>> ds = load_dataset("digits")
    >>> parts = partition_dataset(ds, PartitionConfig(scheme="iid", num_devices=10))
    >>> len(parts), sum(len(p) for p in parts) == ds.num_train
    (10, True)
"""

from stamen.data.dataset import Dataset, Normalization
from stamen.data.facts import DatasetFacts
from stamen.data.loaders import dataset_facts, dataset_names, load_dataset
from stamen.data.partition import (
    Partition,
    PartitionConfig,
    PartitionScheme,
    label_histogram,
    partition,
    partition_dataset,
)
from stamen.data.sampling import rows_by_class, sample_device_rows
from stamen.data.unlabelled import file_inputs, holdout_inputs

__all__ = [
    "Dataset",
    "DatasetFacts",
    "Normalization",
    "Partition",
    "PartitionConfig",
    "PartitionScheme",
    "dataset_facts",
    "dataset_names",
    "file_inputs",
    "holdout_inputs",
    "label_histogram",
    "load_dataset",
    "partition",
    "partition_dataset",
    "rows_by_class",
    "sample_device_rows",
]
