"""Turn raw arrays into a prepared :class:`~stamen.data.dataset.Dataset`.

Every loader (built-in or a user's ``.npz``) goes through
:func:`dataset_from_arrays`, so all datasets are validated, encoded and
standardized the same way:

- inputs of shape ``(N, F)`` are feature tables; ``(N, H, W)`` and
  ``(N, C, H, W)`` are images (a channel axis is added to the former);
- images are brought to ``[0, 1]`` (``uint8`` divides by 255, data already in
  ``[0, 1]`` is kept, anything else is min-max scaled with the training range),
  then standardized per channel with training statistics;
- features are standardized per feature with training statistics;
- integer labels are remapped to ``0..K-1`` in sorted order, consistently
  across train and test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset, Normalization

# Rows per chunk when computing standard deviations, so that the float64
# temporaries stay small even for the 60k-image MNIST training set.
_STATS_CHUNK_ROWS = 8192
# Rows per chunk for 8-bit images: bincount and take copy their uint8 indices to 8-byte
# integers, and a chunk of 512 MNIST images keeps that copy (3 MB) in cache.
_PIXEL_CHUNK_ROWS = 512


def dataset_from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    client_train: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Dataset:
    """Validate raw arrays and return a standardized, read-only Dataset.

    ``class_names[v]`` names the raw label value ``v``; ``value_range`` gives
    the raw range of image pixels when it is known (for example ``(0, 16)``
    for sklearn's digits) instead of inferring it. Raises ``DataError`` with a
    message naming the dataset and the offending array.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> ds = dataset_from_arrays(
        ...     "toy", rng.normal(size=(8, 3)), np.array([5, 7] * 4),
        ...     rng.normal(size=(4, 3)), np.array([7, 5, 5, 7]))
        >>> ds.input_shape, ds.num_classes, ds.class_names, ds.y_train[:2].tolist()
        ((3,), 2, ('5', '7'), [0, 1])
    """
    where = f"dataset {name!r}"
    x_train = _checked_inputs(where, "x_train", x_train)
    x_test = _checked_inputs(where, "x_test", x_test)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{where}: x_test samples have shape {x_test.shape[1:]} "
            f"but x_train samples have shape {x_train.shape[1:]}"
        )
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if np.ndim(y) != 1 or len(y) != len(x):
            raise DataError(
                f"{where}: x_{split} has {len(x)} rows but y_{split} has shape {np.shape(y)}; "
                f"y_{split} must be 1-D with one label per row"
            )
    labels_train, labels_test, values = _encode_labels(where, y_train, y_test)
    clients = None if client_train is None else _checked_clients(where, client_train, len(x_train))

    if x_train.ndim == 2:
        prepared_train, normalization = _standardize(x_train, 0.0, 1.0, axes=(0,))
    else:
        offset, scale = _image_range(x_train, value_range)
        prepared_train, normalization = _standardize(x_train, offset, scale, axes=(0, 2, 3))
    prepared_test = normalization.apply(x_test)

    names = _class_names(where, values, class_names)
    return Dataset(
        name=name,
        x_train=prepared_train,
        y_train=labels_train,
        x_test=prepared_test,
        y_test=labels_test,
        num_classes=len(values),
        input_shape=tuple(int(d) for d in prepared_train.shape[1:]),
        client_train=clients,
        class_names=names,
        normalization=normalization,
    )


def _checked_inputs(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """Return ``x`` as numeric (N, F) or (N, C, H, W); raise DataError otherwise."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {key} must be numeric; got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, np.newaxis]
    if x.ndim not in (2, 4):
        raise DataError(
            f"{where}: {key} must have shape (N, F), (N, H, W) or (N, C, H, W); got {x.shape}"
        )
    if len(x) == 0 or 0 in x.shape[1:]:
        raise DataError(f"{where}: {key} is empty (shape {x.shape})")
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(f"{where}: {key} has {bad} NaN or infinite values")
    return x


def _encode_labels(
    where: str, y_train: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map integer labels to 0..K-1; return (train, test, sorted raw values)."""
    as_int = []
    for key, y in (("y_train", np.asarray(y_train)), ("y_test", np.asarray(y_test))):
        if y.dtype.kind == "f":
            fractional = y[~np.isfinite(y) | (y != np.round(y))]
            if fractional.size:
                raise DataError(
                    f"{where}: {key} must hold integer class labels; found {fractional[0]!r}"
                )
        elif y.dtype.kind not in "biu":
            raise DataError(f"{where}: {key} must hold integer class labels; got dtype {y.dtype}")
        as_int.append(y.astype(np.int64))
    values, encoded = np.unique(np.concatenate(as_int), return_inverse=True)
    split = len(as_int[0])
    return encoded[:split].astype(np.int64), encoded[split:].astype(np.int64), values


def _checked_clients(where: str, client_train: np.ndarray, num_rows: int) -> np.ndarray:
    """Return a copy of ``client_train`` after checking its shape and dtype."""
    clients = np.array(client_train)
    if clients.shape != (num_rows,):
        raise DataError(
            f"{where}: client_train has shape {clients.shape}; "
            f"it needs one client id per training row ({num_rows},)"
        )
    if clients.dtype.kind not in "iuU":
        raise DataError(
            f"{where}: client_train must hold integer or string client ids; got dtype "
            f"{clients.dtype}"
        )
    return clients


def _image_range(x: np.ndarray, value_range: tuple[float, float] | None) -> tuple[float, float]:
    """Return (offset, scale) that bring raw training pixels to [0, 1]."""
    if value_range is not None:
        low, high = value_range
    elif x.dtype == np.uint8:
        low, high = 0.0, 255.0
    else:
        low, high = float(x.min()), float(x.max())
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
    scale = high - low
    return float(low), float(scale) if scale > 0 else 1.0


def _standardize(
    x: np.ndarray, offset: float, scale: float, axes: tuple[int, ...]
) -> tuple[np.ndarray, Normalization]:
    """Scale ``x`` to unit range, then standardize over ``axes`` with its own stats."""
    if x.dtype == np.uint8 and x.ndim == 4 and axes == (0, 2, 3):
        return _standardize_uint8_images(x, offset, scale)
    unit = x.astype(np.float32)
    unit -= np.float32(offset)
    unit /= np.float32(scale)
    mean = unit.mean(axis=axes, dtype=np.float64, keepdims=True)
    squares = np.zeros_like(mean)
    for start in range(0, len(unit), _STATS_CHUNK_ROWS):
        centred = unit[start : start + _STATS_CHUNK_ROWS] - mean
        squares += np.square(centred).sum(axis=axes, keepdims=True)
    std = np.sqrt(squares / (unit.size // mean.size))
    # A constant pixel or feature carries no information; dividing by 1 keeps it at 0.
    std[std == 0] = 1.0
    mean32, std32 = mean[0].astype(np.float32), std[0].astype(np.float32)
    unit -= mean32
    unit /= std32
    return unit, Normalization(offset=offset, scale=scale, mean=mean32, std=std32)


def _class_names(
    where: str, values: np.ndarray, class_names: Sequence[str] | None
) -> tuple[str, ...]:
    """Name each encoded class after its raw label value or the given names."""
    if class_names is None:
        return tuple(str(v) for v in values)
    if values.min() < 0 or values.max() >= len(class_names):
        raise DataError(
            f"{where}: labels range {values.min()}..{values.max()} "
            f"but only {len(class_names)} class names were given"
        )
    return tuple(class_names[int(v)] for v in values)


def _standardize_uint8_images(
    x: np.ndarray, offset: float, scale: float
) -> tuple[np.ndarray, Normalization]:
    """``_standardize`` for 8-bit images, per channel, through a 256-entry table.

    A pixel has only 256 possible values, so the statistics come from a histogram and
    the output from one table lookup: the same float32 arithmetic per value as the
    general path, at a fraction of its passes over a large image set.
    """
    levels = np.arange(256, dtype=np.float32)
    levels -= np.float32(offset)
    levels /= np.float32(scale)
    channels = x.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(x), _PIXEL_CHUNK_ROWS):
        for channel in range(channels):
            pixels = x[start : start + _PIXEL_CHUNK_ROWS, channel].ravel()
            counts[channel] += np.bincount(pixels, minlength=256)
    totals = counts.sum(axis=1)
    mean = counts @ levels.astype(np.float64) / totals
    variance = (counts * np.square(levels[None, :] - mean[:, None])).sum(axis=1) / totals
    std = np.sqrt(variance)
    std[std == 0] = 1.0
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    tables = (levels[None, :] - mean32[:, None]) / std32[:, None]
    with _small_pages():
        unit = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), _PIXEL_CHUNK_ROWS):
        rows = slice(start, start + _PIXEL_CHUNK_ROWS)
        for channel in range(channels):
            # Pixels are uint8, always inside the table: "clip" skips the bounds check.
            np.take(tables[channel], x[rows, channel], out=unit[rows, channel], mode="clip")
    shape = (channels, 1, 1)
    return unit, Normalization(
        offset=offset, scale=scale, mean=mean32.reshape(shape), std=std32.reshape(shape)
    )


@contextlib.contextmanager
def _small_pages() -> Iterator[None]:
    """Allocate without asking for transparent huge pages (numpy asks for large arrays).

    Filling a fresh image set of a few hundred MB with huge pages made the kernel compact
    memory first: 0.2 to 0.9 s for MNIST's training images, against a steady 0.3 s with
    ordinary pages, on the run's critical path to its first round.
    """
    toggle = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(toggle, "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)
