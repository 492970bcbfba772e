"""Every docstring example in every Stamen module runs and prints what it claims."""

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import stamen.core

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def all_modules() -> list[str]:
    """Every module of every ``stamen.X`` package, recursively (generated protobuf code aside)."""
    # ``stamen`` is a namespace package whose editable path cannot be listed,
    # so the walk starts from the packages pyproject.toml maps.
    mapped = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    names = []
    for top in mapped:
        package = importlib.import_module(top)
        names.append(top)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{top}.")]
    return sorted(name for name in names if "_pb2" not in name)


def test_the_walk_reaches_nested_packages() -> None:
    modules = all_modules()
    assert stamen.core.__name__ in modules
    assert any(name.startswith("stamen.client.agent.") for name in modules)
    assert any(name.startswith("stamen.server.edge.") for name in modules)


@pytest.mark.parametrize("name", all_modules())
def test_docstring_examples(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
