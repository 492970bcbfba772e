"""The privacy flags of ``stamen simulate`` and ``stamen server``: secure aggregation and
differential privacy (docs/privacy.md). Part of :mod:`stamen.cli.option_table`."""

from __future__ import annotations

from stamen.cli.options import Option

PRIV = "Privacy"

SECURE_AGGREGATION = Option(
    "secure_aggregation",
    bool | None,
    "The server learns only each round's sum (SecAgg+), still compressed.",
    PRIV,
    key="privacy.secure_aggregation",
    flags=("--secure-aggregation/--no-secure-aggregation",),
)
DP = Option(
    "dp",
    str | None,
    "Client-level DP: off, central (the server adds noise) or distributed (devices add "
    "noise under secure aggregation).  \\[default: off]",
    PRIV,
    key="privacy.mode",
)
TARGET_EPSILON = Option(
    "target_epsilon",
    float | None,
    "Set the DP noise to spend this epsilon over the run (at --dp-delta).",
    PRIV,
    key="privacy.target_epsilon",
)
DP_DELTA = Option(
    "dp_delta",
    float | None,
    "The delta epsilon is stated at.  \\[default: 1e-5]",
    PRIV,
    key="privacy.delta",
)
DP_CLIP = Option(
    "dp_clip",
    float | None,
    "L2 bound on one device's update.  \\[default: 0.5]",
    PRIV,
    key="privacy.clip",
)

PRIVACY = (SECURE_AGGREGATION, DP, TARGET_EPSILON, DP_DELTA, DP_CLIP)
"""Privacy flags, wherever a command runs a federation."""
