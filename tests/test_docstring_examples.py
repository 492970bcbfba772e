"""Every docstring example in every Stamen module runs and prints what it claims."""

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import stamen.core


def all_modules() -> list[str]:
    """Every module under ``stamen``, recursively (generated protobuf code aside)."""
    # ``stamen`` is a namespace package; its portions are the mapped code folders.
    root = importlib.import_module("stamen")
    found = pkgutil.walk_packages(root.__path__, prefix="stamen.", onerror=lambda _: None)
    return sorted(info.name for info in found if "_pb2" not in info.name)


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
