"""Users' own datasets, stored as one ``.npz`` file.

The file holds ``x_train``, ``y_train``, ``x_test`` and ``y_test``, and may
hold ``client_train``: one client id (integer or string) per training row,
used by the natural partition. Inputs may be feature tables ``(N, F)``,
single-channel images ``(N, H, W)`` or images ``(N, C, H, W)``; labels are any
integers. Other arrays in the file are ignored. Write one with::

    np.savez(path, x_train=..., y_train=..., x_test=..., y_test=..., client_train=...)
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from stamen.core.errors import DataError
from stamen.data.dataset import Dataset
from stamen.data.prepare import dataset_from_arrays

REQUIRED_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS: tuple[str, ...] = ("client_train",)


def load_npz(path: Path, name: str) -> Dataset:
    """Read, validate and prepare the dataset in ``path``; ``name`` labels it.

    Raises ``DataError`` when the file is missing, unreadable, lacks a
    required array, or holds arrays that do not fit together.
    """
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read dataset file {path}: it is not an .npz archive") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"dataset file {path} is a single .npy array, not an .npz archive")
    with archive:
        missing = [key for key in REQUIRED_KEYS if key not in archive.files]
        if missing:
            raise DataError(
                f"dataset file {path} lacks {', '.join(missing)}; it needs "
                f"{', '.join(REQUIRED_KEYS)} and may have {', '.join(OPTIONAL_KEYS)}"
            )
        known = [key for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if key in archive.files]
        arrays = {key: _read(archive, key, path) for key in known}
    return dataset_from_arrays(
        name,
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        client_train=arrays.get("client_train"),
    )


def _read(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Read one array, refusing pickled Python objects (they could run code)."""
    try:
        return archive[key]
    except ValueError as exc:
        raise DataError(
            f"dataset file {path}: {key} holds Python objects; save plain numeric arrays"
        ) from exc
