"""Server-held unlabelled inputs for ensemble distillation: a held-out split, or a user file.

``holdout`` draws rows of the training set with a fixed seed and keeps only their inputs;
the labels never leave this function. Those rows are not removed from the devices'
partitions: the server holds unlabelled copies of inputs that some devices also hold, as a
public unlabelled set of the same distribution would be. ``npz:PATH`` reads the array ``x``
(prepared like the training inputs, shape ``(N, *input_shape)``) from a user's file.

Examples:
    >>> from stamen.data import load_dataset
    >>> x = holdout_inputs(load_dataset("digits"), size=100, seed=0)
    >>> x.shape, x.dtype.name
    ((100, 1, 8, 8), 'float32')
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset


def holdout_inputs(dataset: Dataset, size: int, seed: int) -> np.ndarray:
    """``size`` training inputs (at most all of them), drawn with ``seed``, without labels.

    Examples:
        >>> from stamen.data import load_dataset
        >>> holdout_inputs(load_dataset("digits"), size=100, seed=0).shape
        (100, 1, 8, 8)
    """
    if size < 1:
        raise DataError(f"the unlabelled holdout needs at least one row; got {size}")
    rng = np.random.default_rng([seed, 7])
    index = rng.choice(dataset.num_train, size=min(size, dataset.num_train), replace=False)
    return np.array(dataset.x_train[np.sort(index)], dtype=np.float32)


def file_inputs(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """The array ``x`` of an ``.npz`` file, checked against the model's input shape.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "unlabelled.npz"
        >>> np.savez(path, x=np.zeros((5, 8, 8)))
        >>> file_inputs(path, input_shape=(1, 8, 8)).shape  # single-channel images gain C
        (5, 1, 8, 8)
        >>> file_inputs(path, input_shape=(64,))
        Traceback (most recent call last):
        ...
        stamen.core.errors.DataError: unlabelled data file ...: x has shape (5, 8, 8); ...
    """
    if not path.is_file():
        raise DataError(f"unlabelled data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"unlabelled data file {path} has no array 'x'")
            x = np.asarray(archive["x"], dtype=np.float32)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read unlabelled data file {path}: {error}") from None
    if x.ndim == len(input_shape) and len(input_shape) == 3 and input_shape[0] == 1:
        x = x[:, None]  # (N, H, W) single-channel images
    if tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise DataError(
            f"unlabelled data file {path}: x has shape {x.shape}; expected (N, "
            f"{', '.join(map(str, input_shape))}) with N >= 1"
        )
    if not np.isfinite(x).all():
        raise DataError(f"unlabelled data file {path}: x holds NaN or infinite values")
    return x
