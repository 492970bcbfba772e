"""Bound each accepted update's influence on its round: weight cap, clipping, direction.

The rules and their defaults are :class:`~stamen.config.DefenseSettings`'s. They run
after the gate (every update here is well-formed and finite) and before any
strategy sees the updates, so every aggregation rule gets bounded inputs. Each
bound is relative to the round's median, which a minority of devices cannot
move: no tuning per model, dataset or training phase.

Examples:
    >>> import numpy as np
    >>> from stamen.config import DefenseSettings
    >>> honest = [
    ...     ValidUpdate({"w": np.array([1.0, 0.1 * i])}, 10, 0, False, None) for i in range(5)
    ... ]
    >>> flipped = ValidUpdate({"w": np.array([-10.0, 0.0])}, 10**6, 0, False, None, node_id=9)
    >>> bounded = bound_updates([*honest, flipped], DefenseSettings())
    >>> len(bounded.kept), bounded.rejected[0][0].node_id, bounded.capped_weights
    (5, 9, 1)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from stamen.config import DefenseSettings
from stamen.transport.deltas import l2_norm
from stamen.transport.reply_validation import ValidUpdate


@dataclass
class BoundedRound:
    """The round's updates after bounding, and what the bounds did."""

    kept: list[ValidUpdate]
    positions: list[int] = field(default_factory=list)
    """Where each kept update stood in the input."""
    rejected: list[tuple[ValidUpdate, str]] = field(default_factory=list)
    clip_bound: float | None = None
    """The L2 bound deltas were clipped to (``None``: no clipping this round)."""
    clipped: int = 0
    capped_weights: int = 0


def bound_updates(updates: list[ValidUpdate], defense: DefenseSettings) -> BoundedRound:
    """Cap weights, clip norms, then reject deltas that pull against the round."""
    if not updates:
        return BoundedRound(kept=[])
    updates, capped = _cap_weights(updates, defense)
    updates, bound, clipped = _clip(updates, defense.clip_factor)
    rejected = _check_directions(updates, defense)
    positions = [i for i in range(len(updates)) if i not in rejected]
    return BoundedRound(
        kept=[updates[i] for i in positions],
        positions=positions,
        rejected=[(updates[i], reason) for i, reason in rejected.items()],
        clip_bound=bound,
        clipped=clipped,
        capped_weights=capped,
    )


def _cap_weights(
    updates: list[ValidUpdate], defense: DefenseSettings
) -> tuple[list[ValidUpdate], int]:
    caps = []
    if defense.weight_cap_factor > 0:
        median = float(np.median([update.num_examples for update in updates]))
        caps.append(max(1, math.floor(defense.weight_cap_factor * median)))
    if defense.max_num_examples > 0:
        caps.append(defense.max_num_examples)
    if not caps:
        return updates, 0
    cap = min(caps)
    capped = [
        dataclasses.replace(update, num_examples=cap) if update.num_examples > cap else update
        for update in updates
    ]
    return capped, sum(update.num_examples > cap for update in updates)


def _clip(updates: list[ValidUpdate], factor: float) -> tuple[list[ValidUpdate], float | None, int]:
    if factor <= 0:
        return updates, None, 0
    norms = [l2_norm(update.delta) for update in updates]
    bound = factor * float(np.median(norms))
    if bound <= 0:
        return updates, None, 0
    clipped = [
        dataclasses.replace(
            update, delta={name: value * (bound / norm) for name, value in update.delta.items()}
        )
        if norm > bound
        else update
        for update, norm in zip(updates, norms, strict=True)
    ]
    return clipped, bound, sum(norm > bound for norm in norms)


def _check_directions(updates: list[ValidUpdate], defense: DefenseSettings) -> dict[int, str]:
    """The positions of the deltas that pull against the rest of the round, with why."""
    if len(updates) < defense.min_round_for_direction or defense.min_cosine <= -1:
        return {}
    # Directions only: each delta as a unit vector, so the reference is a vote of devices,
    # not of norms; a few long (if clipped) deltas cannot turn it against the rest.
    names = list(updates[0].delta)
    norms = [l2_norm(update.delta) for update in updates]
    total = {
        name: sum(
            u.delta[name].astype(np.float64) / n
            for u, n in zip(updates, norms, strict=True)
            if n > 0
        )
        for name in names
    }
    rejected = {}
    for position, (update, norm) in enumerate(zip(updates, norms, strict=True)):
        if norm <= 0:
            continue
        unit = {name: update.delta[name].astype(np.float64) / norm for name in names}
        along = sum(float(np.vdot(unit[name], total[name])) for name in names)
        others_sq = sum(
            float(np.vdot(total[name] - unit[name], total[name] - unit[name])) for name in names
        )
        if others_sq <= 0:
            continue
        cosine = (along - 1.0) / math.sqrt(others_sq)
        if cosine < defense.min_cosine:
            rejected[position] = (
                f"delta points against the round: cosine {cosine:.2f} with the other "
                f"devices' mean direction, below defense.min_cosine = {defense.min_cosine:g}"
            )
    if 2 * len(rejected) >= len(updates):
        return {}  # not a minority: a split round, not attackers
    return rejected
