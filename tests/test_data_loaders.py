"""Built-in datasets load offline with the right shapes, and user .npz files are validated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamen.core.errors import DataError
from stamen.data import Dataset, dataset_facts, dataset_names, load_dataset
from stamen.data.facts import facts_of
from stamen.data.watch import WATCH_FEATURES

# name -> (train rows, test rows, sample shape, classes)
BUILTIN_SHAPES = {
    "digits": (1437, 360, (1, 8, 8), 10),
    "mnist": (60000, 10000, (1, 28, 28), 10),
    "mnist-small": (4000, 1000, (1, 28, 28), 10),
    "watch": (112, 28, (48,), 7),
    "heart-disease": (486, 254, (13,), 2),
    "spoken-digits": (2400, 600, (104,), 10),
}
PER_CENTRE_STANDARDISED = {"heart-disease"}
"""Standardised per hospital (FLamby), so not to mean 0 and std 1 as a whole."""


def test_dataset_names_lists_every_builtin() -> None:
    assert dataset_names() == list(BUILTIN_SHAPES)


@pytest.mark.parametrize("name", list(BUILTIN_SHAPES))
def test_builtin_dataset_is_prepared_for_training(name: str) -> None:
    num_train, num_test, sample_shape, num_classes = BUILTIN_SHAPES[name]
    ds = load_dataset(name)

    assert ds.x_train.shape == (num_train, *sample_shape)
    assert ds.x_test.shape == (num_test, *sample_shape)
    assert ds.input_shape == sample_shape
    assert ds.num_classes == num_classes == len(ds.class_names)
    assert (ds.x_train.dtype, ds.x_test.dtype) == (np.float32, np.float32)
    assert (ds.y_train.dtype, ds.y_test.dtype) == (np.int64, np.int64)
    assert set(np.unique(ds.y_train)) == set(range(num_classes))
    assert set(np.unique(ds.y_test)) == set(range(num_classes))
    # Standardized with training statistics.
    assert abs(float(ds.x_train.mean())) < 1e-3
    if name not in PER_CENTRE_STANDARDISED:
        assert float(ds.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert load_dataset(name) is ds, "datasets are cached per process"


@pytest.mark.parametrize("name", list(BUILTIN_SHAPES))
def test_stated_facts_of_each_builtin_match_the_loaded_data(name: str) -> None:
    # Derived defaults read the table so that resolving a config loads nothing.
    assert dataset_facts(name) == facts_of(load_dataset(name))


def test_mnist_keeps_the_standard_split_and_statistics() -> None:
    ds = load_dataset("mnist")
    # The well-known per-class count of the standard training set, and its pixel stats.
    assert np.bincount(ds.y_train).tolist()[:3] == [5923, 6742, 5958]
    assert ds.normalization is not None
    assert float(ds.normalization.mean.item()) == pytest.approx(0.1307, abs=1e-3)
    assert float(ds.normalization.std.item()) == pytest.approx(0.3081, abs=1e-3)


def test_watch_has_named_classes_documented_features_and_subjects_as_clients() -> None:
    ds = load_dataset("watch")
    assert ds.class_names == ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
    assert len(WATCH_FEATURES) == ds.input_shape[0]
    assert ds.client_train is not None
    assert sorted(np.unique(ds.client_train).tolist()) == list(range(1, 11))


def test_cached_arrays_cannot_be_modified_by_a_caller() -> None:
    ds = load_dataset("digits")
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0] = 0.0


def test_unknown_name_lists_the_allowed_names() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*digits, mnist.*npz:PATH"):
        load_dataset("cifar")


def _write(path: Path, **arrays: Any) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _image_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.integers(0, 256, size=(30, 6, 5), dtype=np.uint8),
        "y_train": np.array([3, 7, 9] * 10),
        "x_test": rng.integers(0, 256, size=(6, 6, 5), dtype=np.uint8),
        "y_test": np.array([9, 7, 3] * 2),
    }


def test_npz_images_round_trip_with_channel_axis_and_remapped_labels(tmp_path: Path) -> None:
    arrays = _image_arrays(np.random.default_rng(0))
    clients = np.array(["phone", "board", "watch"] * 10)
    ds = load_dataset(_write(tmp_path / "mine.npz", **arrays, client_train=clients))

    assert isinstance(ds, Dataset)
    assert ds.input_shape == (1, 6, 5)
    assert ds.x_train.shape == (30, 1, 6, 5)
    assert ds.num_classes == 3
    assert ds.class_names == ("3", "7", "9")
    assert ds.y_train[:3].tolist() == [0, 1, 2]
    assert ds.y_test[:3].tolist() == [2, 1, 0]
    assert ds.client_train is not None and ds.client_train.tolist() == clients.tolist()
    # The recorded normalization reproduces the prepared test set from raw pixels.
    assert ds.normalization is not None
    np.testing.assert_allclose(
        ds.normalization.apply(arrays["x_test"][:, None]), ds.x_test, rtol=1e-5, atol=1e-5
    )


def test_npz_feature_table_and_multichannel_images_are_accepted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = load_dataset(
        _write(
            tmp_path / "features.npz",
            x_train=rng.normal(5.0, 3.0, size=(40, 4)),
            y_train=np.arange(40) % 2,
            x_test=rng.normal(size=(10, 4)),
            y_test=np.arange(10) % 2,
        )
    )
    assert features.input_shape == (4,)
    np.testing.assert_allclose(features.x_train.std(axis=0), 1.0, rtol=1e-4)

    images = load_dataset(
        _write(
            tmp_path / "rgb.npz",
            x_train=rng.random(size=(8, 3, 4, 4)),
            y_train=np.arange(8) % 4,
            x_test=rng.random(size=(2, 3, 4, 4)),
            y_test=np.array([0, 1]),
        )
    )
    assert images.input_shape == (3, 4, 4)


def test_rewritten_npz_file_is_reloaded(tmp_path: Path) -> None:
    arrays = _image_arrays(np.random.default_rng(2))
    spec = _write(tmp_path / "data.npz", **arrays)
    assert load_dataset(spec).num_train == 30
    shorter = {**arrays, "x_train": arrays["x_train"][:15], "y_train": arrays["y_train"][:15]}
    _write(tmp_path / "data.npz", **shorter)
    assert load_dataset(spec).num_train == 15


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_test": None, "y_test": None}, r"lacks x_test, y_test; it needs x_train"),
        ({"y_train": np.arange(29) % 3}, r"x_train has 30 rows but y_train has shape \(29,\)"),
        ({"y_train": np.array([0.5, 1.0, 2.0] * 10)}, r"y_train must hold integer .*0\.5"),
        ({"y_test": np.array(["a"] * 6)}, r"y_test must hold integer class labels; got dtype"),
        ({"client_train": np.arange(29)}, r"client_train has shape \(29,\); it needs one client"),
        ({"x_test": np.zeros((6, 5, 5), np.uint8)}, r"x_test samples have shape \(1, 5, 5\)"),
        ({"x_train": np.zeros((30,), np.uint8)}, r"x_train must have shape \(N, F\)"),
    ],
)
def test_malformed_npz_gives_a_data_error_naming_the_problem(
    tmp_path: Path, change: dict[str, np.ndarray | None], message: str
) -> None:
    arrays = {**_image_arrays(np.random.default_rng(3)), **change}
    path = tmp_path / "bad.npz"
    spec = _write(path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError, match=message) as raised:
        load_dataset(spec)
    assert "\n" not in str(raised.value)


def test_nan_in_features_is_reported_with_its_count(tmp_path: Path) -> None:
    x_train = np.ones((10, 3))
    x_train[[1, 4], 2] = np.nan
    spec = _write(
        tmp_path / "nan.npz",
        x_train=x_train,
        y_train=np.arange(10) % 2,
        x_test=np.ones((2, 3)),
        y_test=np.array([0, 1]),
    )
    with pytest.raises(DataError, match="x_train has 2 NaN or infinite values"):
        load_dataset(spec)


def test_missing_unreadable_and_pickled_files_are_data_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match=re.escape(f"dataset file not found: {missing}")):
        load_dataset(f"npz:{missing}")

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive")
    with pytest.raises(DataError, match=r"is not an \.npz archive"):
        load_dataset(f"npz:{garbage}")

    pickled = _image_arrays(np.random.default_rng(4))
    pickled["x_train"] = np.array([{"row": i} for i in range(30)], dtype=object)
    with pytest.raises(DataError, match="x_train holds Python objects"):
        load_dataset(_write(tmp_path / "objects.npz", **pickled))

    with pytest.raises(DataError, match="needs a path"):
        load_dataset("npz:")
