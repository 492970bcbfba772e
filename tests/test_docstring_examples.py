"""Every docstring example in the package runs and prints what it claims."""

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import stamen

SUBPACKAGES = [
    "cli",
    "client",
    "compression",
    "config",
    "data",
    "export",
    "models",
    "server",
    "server.console",
    "server.monitor",
    "simulations",
    "strategies",
]


def all_modules() -> list[str]:
    names = [f"stamen.{info.name}" for info in pkgutil.iter_modules(stamen.__path__)]
    for sub in SUBPACKAGES:
        package = importlib.import_module(f"stamen.{sub}")
        names.append(package.__name__)
        names += [
            f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
        ]
    return sorted(["stamen", *names])


@pytest.mark.parametrize("name", all_modules())
def test_docstring_examples(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
