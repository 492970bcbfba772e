"""One entry point that turns a dataset spec string into a prepared Dataset.

A spec is a built-in name (``digits``, ``mnist``, ``mnist-small``, ``watch``,
``heart-disease``, ``spoken-digits``) or ``npz:PATH`` for a user's file.
Datasets are cached per process: loading MNIST once and partitioning it for
thousands of virtual devices is the common case. An ``npz`` file is re-read
when its size or modification time changes.
"""

from __future__ import annotations

import functools
from pathlib import Path

from stamen.core.errors import DataError
from stamen.data.builtin import BUILTIN_FACTS, BuiltinDataset, load_builtin
from stamen.data.dataset import Dataset
from stamen.data.facts import DatasetFacts, facts_of
from stamen.data.npz import load_npz

NPZ_PREFIX = "npz:"
# Enough for every built-in plus a handful of user files without holding many
# large arrays alive.
_CACHE_SIZE = 8


def dataset_names() -> list[str]:
    """Return the built-in dataset names, for CLI help and validation.

    Examples:
        >>> dataset_names()
        ['digits', 'mnist', 'mnist-small', 'watch', 'heart-disease', 'spoken-digits']
    """
    return [name.value for name in BuiltinDataset]


def load_dataset(spec: str) -> Dataset:
    """Load the dataset named by ``spec``, once per process.

    ``spec`` is a built-in name (see :func:`dataset_names`) or ``npz:PATH``.
    Repeated calls return the same read-only object. Raises ``DataError`` for
    an unknown name, a missing file or malformed arrays.

    Examples:
        >>> ds = load_dataset("digits")
        >>> ds.x_train.shape, ds.y_test.dtype.name, ds.num_classes
        ((1437, 1, 8, 8), 'int64', 10)
        >>> load_dataset("digits") is ds
        True
    """
    cleaned = spec.strip()
    if not cleaned.startswith(NPZ_PREFIX):
        return _load_builtin_cached(_builtin(spec))
    raw_path = cleaned[len(NPZ_PREFIX) :].strip()
    if not raw_path:
        raise DataError(f"dataset spec {spec!r} needs a path, e.g. npz:/data/mine.npz")
    path = Path(raw_path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    stat = path.stat()
    return _load_npz_cached(path, stat.st_mtime_ns, stat.st_size)


def dataset_facts(spec: str) -> DatasetFacts:
    """The size and shape facts of the dataset ``spec`` names, for derived defaults.

    A built-in's come from a table, without loading it; a user's file is loaded (cached).

    Examples:
        >>> dataset_facts("heart-disease")
        DatasetFacts(num_train=486, num_clients=4, images=False)
    """
    if spec.strip().startswith(NPZ_PREFIX):
        return facts_of(load_dataset(spec))
    return BUILTIN_FACTS[_builtin(spec)]


def _builtin(spec: str) -> BuiltinDataset:
    try:
        return BuiltinDataset(spec.strip().lower())
    except ValueError:
        allowed = ", ".join(dataset_names())
        raise DataError(f"unknown dataset {spec!r}; choose one of {allowed}, or npz:PATH") from None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_builtin_cached(name: BuiltinDataset) -> Dataset:
    return load_builtin(name)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_npz_cached(path: Path, mtime_ns: int, size: int) -> Dataset:
    # mtime_ns and size are only part of the cache key: a rewritten file reloads.
    return load_npz(path, name=f"{NPZ_PREFIX}{path}")
