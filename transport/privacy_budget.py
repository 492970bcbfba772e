"""The privacy a run has spent, round by round, as every DP strategy reports it.

A thin, stateful wrapper of :class:`stamen.privacy.PrivacyLedger`: each round adds its
RDP, and the round's stats carry ``epsilon`` (at ``dp_delta``) and the noise multiplier,
so that ``metrics.jsonl``, ``summary.json``, the console and Prometheus show them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stamen.privacy import DpMechanism, epsilon_of, round_rdp
from stamen.transport.stats import RoundStats


class PrivacyBudget:
    """The RDP spent so far, over rounds sampled at ``sampling_rate``, reported at ``delta``."""

    def __init__(self, *, noise_multiplier: float, sampling_rate: float, delta: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.sampling_rate = sampling_rate
        self.delta = delta
        self.rdp: np.ndarray | None = None

    def spend(
        self,
        stats: RoundStats,
        mechanism: DpMechanism,
        *,
        sensitivity: float = 1.0,
        count: int = 1,
    ) -> float:
        """Account one round; record and return the run's epsilon after it."""
        rdp = round_rdp(
            mechanism,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            sensitivity=sensitivity,
            count=count,
        )
        self.rdp = rdp if self.rdp is None else self.rdp + rdp
        epsilon = self.epsilon()
        stats.extra["epsilon"] = epsilon
        stats.extra["dp_delta"] = self.delta
        stats.extra["noise_multiplier"] = self.noise_multiplier
        return epsilon

    def epsilon(self) -> float:
        """The run's epsilon so far (0 before any round)."""
        return 0.0 if self.rdp is None else epsilon_of(self.rdp, self.delta)

    def state_dict(self) -> dict[str, Any]:
        """The RDP so far (a resumed run goes on spending from it)."""
        return {"rdp": None if self.rdp is None else self.rdp.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        rdp = state.get("rdp")
        self.rdp = None if rdp is None else np.asarray(rdp, np.float64)
