"""The ``[defense]`` section: how far the server trusts one device's update.

Every reply first passes the gate (:mod:`stamen.transport.reply_validation`):
well-formed, finite, for this round and this model. What passes is then
bounded against the round it arrived in, so that a minority of devices cannot
steer the model with well-formed but hostile updates. The bounds are relative
to the round's medians, which a minority cannot move, so they need no tuning:

- **clipping**: each delta is scaled down to at most ``clip_factor`` times the
  round's median delta norm (Sun et al. 2019, adaptive as in Andrew et al.
  2021), so a scaled-up update counts at most twice as much as a typical
  honest one. Twice, not once: clipping at the median itself shortens half
  the honest steps every round, which cost 0.77 points of attack-free accuracy
  after 30 MNIST rounds, against 0.06 at twice the median;
- **weights**: a device's self-reported ``num-examples`` counts at most
  ``weight_cap_factor`` times the round's median (and at most
  ``max_num_examples``, when set), so a device cannot outweigh the round by
  claiming a huge dataset;
- **direction**: with at least ``min_round_for_direction`` deltas, a delta whose
  cosine with the mean direction of the others' deltas (each as a unit vector,
  so that long deltas do not outvote the rest) is below ``min_cosine`` is
  rejected: it pulls the model against the round (a sign-flipped update). The
  default, -0.1, sits below where honest deltas fell late in training (down to
  about -0.05 on MNIST, as they grow less aligned) and above where sign-flipped
  ones fell (-0.1 to -0.6), measured against the mean of the clipped deltas
  before the check moved to unit vectors; see docs/security.md;
- **agreement**: with as many deltas, each counts in the round's weighted mean
  for its ``num-examples`` times a trust in [0, 1]: in full from
  ``full_trust_at`` times the round's median cosine up, falling linearly to
  nothing at cosine 0 or below (after FLTrust's cosine trust scores, Cao et
  al. 2021, measured against the round itself instead of a server dataset).
  Noise agrees with nothing (its cosine is near 0 in any dimension), so it
  neither steers the model nor dilutes the honest step, and a sign-flipped
  delta that the direction check let through counts for nothing. Half the
  median, not the median itself, so that honest deltas below the typical
  agreement, which a non-IID round always holds, still count in full.

Examples:
    >>> DefenseSettings().clip_factor
    2.0
    >>> DefenseSettings(clip_factor=-1)
    Traceback (most recent call last):
    ...
    stamen.core.errors.ConfigError: defense.clip_factor must be >= 0 (0: no clipping); got -1
"""

from __future__ import annotations

from dataclasses import dataclass

from stamen.config.checks import require


@dataclass(frozen=True)
class DefenseSettings:
    """Bounds on one device's influence on a round, relative to the round itself."""

    clip_factor: float = 2.0
    """Clip each delta to this multiple of the round's median delta norm; 0: no clipping."""
    weight_cap_factor: float = 3.0
    """A device's num-examples counts at most this multiple of the round's median; 0: no cap."""
    max_num_examples: int = 0
    """A fixed cap on any device's num-examples, on top of the relative one; 0: none."""
    min_cosine: float = -0.1
    """Reject a delta whose cosine with the others' mean direction is below this; -1: never."""
    full_trust_at: float = 0.5
    """A delta counts in full from this share of the round's median cosine up; 0: always."""
    min_round_for_direction: int = 5
    """The direction check needs this many deltas: in smaller rounds one device is no minority."""

    def __post_init__(self) -> None:
        key = "defense."
        require(
            self.clip_factor >= 0, key + "clip_factor", ">= 0 (0: no clipping)", self.clip_factor
        )
        require(
            self.weight_cap_factor >= 0,
            key + "weight_cap_factor",
            ">= 0 (0: no cap)",
            self.weight_cap_factor,
        )
        require(
            self.max_num_examples >= 0,
            key + "max_num_examples",
            ">= 0 (0: none)",
            self.max_num_examples,
        )
        require(-1 <= self.min_cosine <= 1, key + "min_cosine", "in [-1, 1]", self.min_cosine)
        require(
            0 <= self.full_trust_at <= 1, key + "full_trust_at", "in [0, 1]", self.full_trust_at
        )
        require(
            self.min_round_for_direction >= 3,
            key + "min_round_for_direction",
            ">= 3",
            self.min_round_for_direction,
        )

    @classmethod
    def off(cls) -> DefenseSettings:
        """No bounds at all: plain FedAvg semantics, for comparisons and unit tests."""
        return cls(clip_factor=0.0, weight_cap_factor=0.0, min_cosine=-1.0, full_trust_at=0.0)
