"""Benchmark children on this build, or on an earlier build installed in a folder (``--before``).

An earlier build is installed as a plain package beside nothing else::

    git -C CHECKOUT archive COMMIT | tar -x -C /tmp/before-src
    pip install --no-deps --target DIR /tmp/before-src

A child process whose ``PYTHONPATH`` starts with ``DIR`` then imports ``stamen``
from there, while torch, Flower and the rest come from this environment, so a
change is measured against what it replaced in one invocation, on one machine.
The child calls :func:`check_build`, so a figure is never reported for the
wrong build.
"""

from __future__ import annotations

import os
from pathlib import Path

QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
BUILD_VARIABLE = "STAMEN_BENCHMARK_BUILD"
"""Where the child must find ``stamen``: the earlier build's folder, or this checkout."""
CHECKOUT = Path(__file__).resolve().parents[1]


def build_label(before: Path | None) -> str:
    """``"before"`` for an earlier build, ``"this"`` for this checkout."""
    return "before" if before is not None else "this"


def build_env(before: Path | None) -> dict[str, str]:
    """The environment of a child that runs on this build, or on the one in ``before``."""
    env = {**os.environ, **QUIET}
    expected = CHECKOUT
    if before is not None:
        if not (before / "stamen").is_dir():
            raise SystemExit(f"{before} holds no stamen build (pip install --no-deps --target)")
        expected = before.resolve()
        earlier = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join([str(expected), earlier]) if earlier else str(expected)
    env[BUILD_VARIABLE] = str(expected)
    return env


def check_build() -> None:
    """In a child: stop unless ``stamen`` was imported from the build the parent asked for."""
    import stamen.config

    expected = os.environ.get(BUILD_VARIABLE)
    found = Path(stamen.config.__file__).resolve()
    if expected and not found.is_relative_to(expected):
        raise SystemExit(f"stamen was imported from {found}, not from the build in {expected}")
