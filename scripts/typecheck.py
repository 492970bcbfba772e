"""Run mypy over the ``stamen`` package as it is imported.

The code folders map onto ``stamen.*`` through ``package-dir`` in
pyproject.toml, and the editable install resolves them with an import hook
that mypy cannot follow. So this script lays out the same tree as symlinks
under ``build/typecheck/stamen`` and checks ``-p stamen`` there: every
``import stamen.x`` is then resolved and checked, none silently becomes Any.
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
        source = ROOT / folder
        if package == "stamen":
            for item in source.iterdir():
                if item.suffix in (".py", ".typed"):
                    (root / item.name).symlink_to(item)
        else:
            (root / package.split(".", 1)[1]).symlink_to(source, target_is_directory=True)


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
