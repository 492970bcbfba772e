"""The built wheel holds every code folder as a ``stamen`` subpackage."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def code_folders() -> list[Path]:
    """Every top-level folder that holds a Python package, tests excluded."""
    return sorted(p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")


def test_every_code_folder_is_mapped_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = set(setuptools["package-dir"].values())
    assert {folder.name for folder in code_folders()} <= mapped
    for folder in code_folders():
        for sub in folder.rglob("__init__.py"):
            relative = sub.parent.relative_to(folder)
            package = next(k for k, v in setuptools["package-dir"].items() if v == folder.name)
            dotted = ".".join([package, *relative.parts])
            assert dotted in setuptools["packages"], f"{dotted} is missing from packages"


@pytest.mark.timeout(300)
def test_wheel_contains_every_subpackage(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=280,
    )
    wheel = next(tmp_path.glob("stamen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in code_folders():
        package = f"stamen/{folder.name}"
        assert f"{package}/__init__.py" in names, f"{folder.name}/ is not in the wheel"
        assert f"{package}/py.typed" in names
    assert "stamen/protos/update/v1/update_pb2.py" in names
    assert "stamen/protos/update/v1/update.proto" in names
    assert not any(name.startswith(("server/", "client/", "tests/")) for name in names)
    # ``stamen`` is a namespace package: no folder of the checkout stands in for its root.
    assert "stamen/__init__.py" not in names


def test_the_layer_contract_covers_every_package() -> None:
    """A package left out of the import-linter contract would escape the layer check."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapped = set(pyproject["tool"]["setuptools"]["package-dir"])
    linter = pyproject["tool"]["importlinter"]
    assert set(linter["root_packages"]) == mapped
    layers = next(c for c in linter["contracts"] if c["type"] == "layers")["layers"]
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    assert layered == mapped
