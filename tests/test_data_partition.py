"""Partitions cover the data, never leave a device empty, and skew as configured."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.core.errors import ConfigError, DataError
from stamen.data import (
    PartitionConfig,
    PartitionScheme,
    label_histogram,
    load_dataset,
    partition,
    partition_dataset,
)

# 6,000 rows over 10 balanced classes, in a shuffled order.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 600))

COVERING_CONFIGS = [
    PartitionConfig(scheme=PartitionScheme.IID, num_devices=7),
    PartitionConfig(scheme=PartitionScheme.DIRICHLET, num_devices=100, alpha=0.3),
    PartitionConfig(scheme=PartitionScheme.DIRICHLET, num_devices=3000, alpha=0.05),
    PartitionConfig(scheme=PartitionScheme.SHARDS, num_devices=100, shards_per_device=2),
]


def _mean_max_class_fraction(parts: list[np.ndarray]) -> float:
    counts = label_histogram(LABELS, parts, 10)
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


@pytest.mark.parametrize("config", COVERING_CONFIGS, ids=lambda c: f"{c.scheme}-{c.num_devices}")
def test_partition_uses_every_row_once_and_leaves_no_device_empty(
    config: PartitionConfig,
) -> None:
    parts = partition(LABELS, config)

    assert len(parts) == config.num_devices
    assert min(len(p) for p in parts) >= 1
    every_row = np.concatenate(parts)
    assert len(every_row) == len(LABELS)
    assert np.array_equal(np.sort(every_row), np.arange(len(LABELS)))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("config", COVERING_CONFIGS, ids=lambda c: f"{c.scheme}-{c.num_devices}")
def test_partition_is_a_function_of_the_seed(config: PartitionConfig) -> None:
    first = partition(LABELS, config)
    again = partition(LABELS, config)
    reseeded = partition(LABELS, PartitionConfig(**{**config.__dict__, "seed": 1}))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first, reseeded, strict=True))


def test_iid_devices_get_near_equal_sizes_and_all_classes() -> None:
    parts = partition(LABELS, PartitionConfig(scheme="iid", num_devices=7))
    assert {len(p) for p in parts} <= {857, 858}
    assert (label_histogram(LABELS, parts, 10) > 0).all()


def test_small_dirichlet_alpha_is_more_skewed_than_large_alpha() -> None:
    skewed = partition(LABELS, PartitionConfig(num_devices=100, alpha=0.1))
    balanced = partition(LABELS, PartitionConfig(num_devices=100, alpha=100.0))
    assert _mean_max_class_fraction(skewed) > 0.6
    assert _mean_max_class_fraction(balanced) < 0.3


def test_dirichlet_with_as_many_devices_as_rows_gives_each_device_one_row() -> None:
    labels = LABELS[:50]
    parts = partition(labels, PartitionConfig(num_devices=50, alpha=0.01))
    assert [len(p) for p in parts] == [1] * 50


@pytest.mark.parametrize("per_device", [1, 2, 3])
def test_shards_give_each_device_about_its_number_of_shards_in_classes(per_device: int) -> None:
    parts = partition(
        LABELS, PartitionConfig(scheme="shards", num_devices=100, shards_per_device=per_device)
    )
    classes_seen = (label_histogram(LABELS, parts, 10) > 0).sum(axis=1)
    assert {len(p) for p in parts} == {60}
    assert classes_seen.max() <= per_device + 1  # a shard can straddle two classes
    assert per_device - 0.4 <= classes_seen.mean() <= per_device + 0.1


def test_natural_partition_follows_client_ids_in_order_of_first_appearance() -> None:
    client_ids = np.array(["b", "a", "b", "c", "a", "c", "c"])
    parts = partition(np.zeros(7, np.int64), PartitionConfig("natural", 3), client_ids)
    assert [p.tolist() for p in parts] == [[0, 2], [1, 4], [3, 5, 6]]


def test_natural_partition_of_watch_gives_one_device_per_subject() -> None:
    ds = load_dataset("watch")
    assert ds.client_train is not None
    parts = partition_dataset(ds, PartitionConfig(scheme="natural", num_devices=10))

    assert sorted(int(np.unique(ds.client_train[p]).item()) for p in parts) == list(range(1, 11))
    assert sum(len(p) for p in parts) == ds.num_train
    assert partition_dataset(ds, PartitionConfig(scheme="natural", num_devices=10)) is parts
    with pytest.raises(ValueError, match="read-only"):
        parts[0][0] = 1


def test_a_partition_of_many_devices_holds_two_arrays_not_an_array_per_device() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 200_000)
    parts = partition(labels, PartitionConfig(num_devices=100_000, alpha=0.3))
    # 8 bytes a row and a device: a list of 100,000 arrays would add about 10 MB of objects.
    assert parts.nbytes == 8 * (200_000 + 100_001)
    assert len(parts) == 100_000 and len(parts[-1]) >= 1 and parts[-1] is not parts[-1]
    assert sum(len(p) for p in parts[:10]) == int(parts.bounds[10])


def test_more_devices_than_rows_says_how_to_give_each_its_own_draw() -> None:
    with pytest.raises(DataError, match="--samples-per-device"):
        partition(LABELS, PartitionConfig("iid", num_devices=1_000_000))


def test_natural_partition_with_the_wrong_device_count_says_how_many_clients() -> None:
    with pytest.raises(DataError, match="the data has 10 clients; set num_devices to 10"):
        partition_dataset(load_dataset("watch"), PartitionConfig("natural", num_devices=100))


def test_natural_partition_needs_client_ids() -> None:
    with pytest.raises(DataError, match="dataset 'digits' has no client_train"):
        partition_dataset(load_dataset("digits"), PartitionConfig("natural", num_devices=10))
    with pytest.raises(DataError, match="needs client ids"):
        partition(LABELS, PartitionConfig("natural", num_devices=10))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PartitionConfig("iid", num_devices=6001), "each of 6001 devices .* only 6000 training"),
        (PartitionConfig("dirichlet", num_devices=6001), "each of 6001 devices"),
        (PartitionConfig("shards", 3001, shards_per_device=2), "6002 shards .* only 6000"),
    ],
)
def test_impossible_partition_is_a_data_error(config: PartitionConfig, message: str) -> None:
    with pytest.raises(DataError, match=message):
        partition(LABELS, config)


def test_non_integer_labels_are_rejected() -> None:
    with pytest.raises(DataError, match="labels must be a 1-D integer array"):
        partition(LABELS.astype(np.float64), PartitionConfig("iid", num_devices=2))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scheme": "random"}, "scheme must be one of iid, dirichlet, shards, natural; got"),
        ({"num_devices": 0}, "num_devices must be an integer >= 1; got 0"),
        ({"num_devices": True}, "num_devices must be an integer >= 1; got True"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0; got 0.0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0; got nan"),
        ({"shards_per_device": 0}, "shards_per_device must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ],
)
def test_invalid_partition_config_names_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        PartitionConfig(**fields)
    assert "\n" not in str(raised.value)


def test_label_histogram_counts_each_devices_labels() -> None:
    parts = partition(LABELS, PartitionConfig(num_devices=20, alpha=0.5))
    counts = label_histogram(LABELS, parts, 10)
    assert counts.shape == (20, 10)
    assert counts.sum(axis=1).tolist() == [len(p) for p in parts]
    assert counts.sum(axis=0).tolist() == [600] * 10
