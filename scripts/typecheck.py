"""Run mypy over the ``stamen`` package as it is imported.

Each code folder ``X/`` is the package ``stamen.X`` (``package-dir`` in
pyproject.toml), and ``stamen`` itself is a namespace package with no folder
of its own. mypy finds packages by folder name only, so this script links
each folder under ``build/typecheck/stamen/`` and checks ``-p stamen`` there:
every ``import stamen.x`` is then resolved and checked, none silently becomes Any.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def build_tree() -> None:
    """Symlink each mapped folder to its ``stamen`` package path."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shutil.rmtree(TREE, ignore_errors=True)
    root = TREE / "stamen"
    root.mkdir(parents=True)
    for package, folder in setuptools["package-dir"].items():
        (root / package.removeprefix("stamen.")).symlink_to(ROOT / folder, target_is_directory=True)


def main() -> int:
    """Build the tree and run mypy on it."""
    build_tree()
    config = ["--config-file", str(ROOT / "pyproject.toml")]
    package = [sys.executable, "-m", "mypy", *config, "-p", "stamen", *sys.argv[1:]]
    scripts = [
        sys.executable,
        "-m",
        "mypy",
        *config,
        *(str(ROOT / folder) for folder in ("examples", "benchmarks", "scripts")),
    ]
    env = {**os.environ, "MYPYPATH": str(TREE)}
    return max(
        subprocess.run(command, cwd=TREE, env=env, check=False).returncode
        for command in (package, scripts)
    )


if __name__ == "__main__":
    sys.exit(main())
