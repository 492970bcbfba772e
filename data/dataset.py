"""The in-memory dataset every Stamen component trains and evaluates on.

A :class:`Dataset` is already prepared for training: inputs are standardized
``float32`` arrays, labels are ``int64`` class indices ``0..K-1``, and the
arrays are read-only because loaders cache datasets per process and hand the
same object to every caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stamen.core.errors import DataError


@dataclass(frozen=True, eq=False)
class Normalization:
    """How raw inputs were mapped to the standardized values a model sees.

    ``apply`` computes ``((raw - offset) / scale - mean) / std``: the first step
    brings images to ``[0, 1]`` (``offset=0, scale=1`` for feature tables), the
    second standardizes with training statistics. ``mean`` and ``std`` broadcast
    against one sample: per channel ``(C, 1, 1)`` for images, per feature
    ``(F,)`` for feature tables. Keep it to prepare data on a device at
    inference time exactly as the training data was prepared.

    Examples:
        >>> norm = Normalization(0.0, 255.0, np.array([0.5]), np.array([0.25]))
        >>> norm.apply(np.array([255, 0], dtype=np.uint8)).tolist()
        [2.0, -2.0]
    """

    offset: float
    scale: float
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean.flags.writeable = False
        self.std.flags.writeable = False

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Return ``raw`` (one sample or a batch) prepared like the training data."""
        unit = (np.asarray(raw, dtype=np.float32) - np.float32(self.offset)) / np.float32(
            self.scale
        )
        return ((unit - self.mean) / self.std).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for training, with optional natural client ids.

    ``input_shape`` is the shape of one sample: ``(C, H, W)`` for images and
    ``(F,)`` for feature tables. ``client_train`` holds one client id per
    training row when the data has a natural partition (for example one
    subject per smartwatch wearer). ``class_names[i]`` names class ``i``.

    Datasets compare and hash by identity: loaders cache them, so two calls
    with the same spec return the very same object.

    Examples:
        >>> from stamen.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> ds.x_train.shape, ds.input_shape, ds.num_classes
        ((1437, 1, 8, 8), (1, 8, 8), 10)
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    input_shape: tuple[int, ...]
    client_train: np.ndarray | None = field(default=None, repr=False)
    class_names: tuple[str, ...] = field(default=(), repr=False)
    normalization: Normalization | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_split(self, "train", self.x_train, self.y_train)
        _check_split(self, "test", self.x_test, self.y_test)
        if self.client_train is not None and self.client_train.shape != self.y_train.shape:
            raise DataError(
                f"dataset {self.name!r}: client_train has shape {self.client_train.shape} "
                f"but there are {len(self.y_train)} training rows"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise DataError(
                f"dataset {self.name!r}: {len(self.class_names)} class names "
                f"for {self.num_classes} classes"
            )
        for array in (self.x_train, self.y_train, self.x_test, self.y_test, self.client_train):
            if array is not None:
                array.flags.writeable = False

    @property
    def num_train(self) -> int:
        """Number of training rows."""
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        """Number of test rows."""
        return len(self.y_test)

    def __repr__(self) -> str:
        clients = "" if self.client_train is None else ", natural clients"
        return (
            f"Dataset({self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}{clients})"
        )


def _check_split(dataset: Dataset, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Raise DataError unless ``x``/``y`` are consistent prepared arrays."""
    where = f"dataset {dataset.name!r}"
    if x.shape[1:] != dataset.input_shape:
        raise DataError(
            f"{where}: x_{split} samples have shape {x.shape[1:]}, "
            f"expected input_shape {dataset.input_shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: y_{split} has shape {y.shape} for {len(x)} rows of x_{split}")
    if x.dtype != np.float32 or y.dtype != np.int64:
        raise DataError(
            f"{where}: expected float32 x_{split} and int64 y_{split}; got {x.dtype} and {y.dtype}"
        )
    if len(y) and (y.min() < 0 or y.max() >= dataset.num_classes):
        raise DataError(f"{where}: y_{split} must hold labels 0..{dataset.num_classes - 1}")
