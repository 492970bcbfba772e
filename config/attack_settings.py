"""The ``[attack]`` section: a test and benchmark harness in which some devices send
malicious but correctly encoded updates (``stamen.simulations.attacks`` carries it out)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stamen.config.checks import require, require_member


class AttackKind(enum.StrEnum):
    """What the malicious devices of an ``[attack]`` section send."""

    NONE = "none"
    SIGN_FLIP = "sign-flip"
    """The honest delta negated and multiplied by ``scale``."""
    SCALE = "scale"
    """The honest delta multiplied by ``scale``."""
    RANDOM = "random"
    """Gaussian noise with ``scale`` times the honest delta's norm."""
    NAN = "nan"
    INF = "inf"
    STALE = "stale"
    """The device's first update, replayed in every later round."""
    DENSE = "dense"
    """A plain Flower reply: dense weights (global model + ``scale`` times the honest delta)
    with a large self-reported ``num-examples``."""


@dataclass(frozen=True)
class AttackSettings:
    """A test and benchmark harness: some devices send malicious, correctly encoded updates."""

    kind: AttackKind = AttackKind.NONE
    fraction: float = 0.2
    """Share of the fleet that attacks, chosen from federation.seed."""
    scale: float = 10.0

    def __post_init__(self) -> None:
        require_member(self, "kind", AttackKind, "attack.kind")
        require(0 <= self.fraction <= 1, "attack.fraction", "in [0, 1]", self.fraction)
        require(self.scale > 0, "attack.scale", "> 0", self.scale)

    @property
    def active(self) -> bool:
        """Whether any device attacks."""
        return self.kind is not AttackKind.NONE and self.fraction > 0
