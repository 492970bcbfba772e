"""DP-FedAvg with central noise: the trusted server clips each update and noises their sum.

McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018, https://arxiv.org/abs/1710.06963; server-side fixed clipping as
Flower's ``DifferentialPrivacyServerSideFixedClipping``, but over Stamen's compressed
updates: each decoded delta is clipped to ``clip`` in L2, the clipped deltas are summed
with equal weight, Gaussian noise of ``noise_multiplier * clip`` is added to every
coordinate (a top-k update's sparsity pattern depends on its data, so no coordinate is
spared), and the sum is divided by the number of updates. The accountant
(:class:`~stamen.transport.privacy_budget.PrivacyBudget`) reports epsilon each round.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stamen.privacy import DpMechanism, calibrate_noise
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport import ValidUpdate
from stamen.transport.privacy_budget import PrivacyBudget

LOG = logging.getLogger("stamen.strategies")


class DPFedAvg(CompressedFedAvg):
    """FedAvg of clipped deltas plus Gaussian noise on the server (central DP).

    Args:
        clip: L2 bound on each delta (the sensitivity of the sum).
        noise_multiplier: noise standard deviation in units of ``clip``.
        target_epsilon: where > 0, the noise multiplier that spends it over ``rounds``.
        delta: the delta epsilon is reported at.
        num_devices, rounds: for the sampling rate and the calibration.
    """

    def __init__(
        self,
        *,
        clip: float = 0.5,
        noise_multiplier: float = 1.0,
        target_epsilon: float = 0.0,
        delta: float = 1e-5,
        num_devices: int = 100,
        rounds: int = 20,
        **transport: Any,
    ) -> None:
        super().__init__(**transport)
        self.clip = clip
        sampling_rate = min(1.0, self.devices_per_round / num_devices)
        if target_epsilon > 0:
            noise_multiplier = calibrate_noise(
                DpMechanism.GAUSSIAN,
                target_epsilon=target_epsilon,
                delta=delta,
                sampling_rate=sampling_rate,
                rounds=rounds,
            )
        self.budget = PrivacyBudget(
            noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, delta=delta
        )
        self.noise_rng = np.random.default_rng([self.task.seed, 0xD9])
        self._round = 0

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        """As FedAvg's, then the round's privacy is accounted (none for a round with no update)."""
        self._round = server_round
        arrays, metrics = super().aggregate_train(server_round, replies)
        stats = self.stats[server_round]
        if arrays is not None:
            self.budget.spend(stats, DpMechanism.GAUSSIAN)
        else:
            stats.extra["epsilon"] = self.budget.epsilon()
            stats.extra["dp_delta"] = self.budget.delta
        return arrays, metrics

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """The noisy mean of the clipped deltas, each with equal weight."""
        total: dict[str, np.ndarray] = {
            n: np.zeros(v.shape, np.float64) for n, v in updates[0].delta.items()
        }
        for update in updates:
            norm = float(
                np.sqrt(
                    sum(
                        float(np.sum(np.square(v, dtype=np.float64))) for v in update.delta.values()
                    )
                )
            )
            factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
            for name, value in update.delta.items():
                total[name] += factor * value
        sigma = self.budget.noise_multiplier * self.clip
        return {
            n: (v + self.noise_rng.normal(0.0, sigma, v.shape)) / len(updates)
            for n, v in total.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """The transport's state and the privacy spent."""
        state = super().state_dict()
        state["dp"] = {
            "budget": self.budget.state_dict(),
            "noise_rng": self.noise_rng.bit_generator.state,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        if "dp" in state:
            self.budget.load_state_dict(state["dp"]["budget"])
            self.noise_rng.bit_generator.state = state["dp"]["noise_rng"]
