"""Client-level privacy accounting: RDP over rounds, with amplification by sampling.

The unit is a device: two runs are neighbours when one device's data is there in one
and absent in the other, and ``epsilon`` bounds what the released models say about
any one device (McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
Recurrent Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963). Each round
samples ``devices_per_round`` of ``num_devices``, accounted as Poisson sampling at
rate ``q = devices_per_round / num_devices``, as DP-FedAvg, TFF and Flower do.

- **central**: the server adds Gaussian noise to the sum; Opacus's RDP accountant of
  the sampled Gaussian mechanism (Mironov, Talwar and Zhang 2019,
  https://arxiv.org/abs/1908.10530) gives each round's RDP.
- **distributed**: the devices' Skellam noise (:mod:`stamen.privacy.skellam`); its RDP
  curve is amplified by Poisson sampling with Zhu and Wang's general bound ("Poisson
  Subsampled Rényi Differential Privacy", ICML 2019, Theorem 6), valid for any
  mechanism and integer orders.

RDP adds up over rounds and converts to ``(epsilon, delta)`` with Balle et al.'s bound
(Opacus's ``get_privacy_spent``).

Examples:
    >>> ledger = PrivacyLedger(DpMechanism.GAUSSIAN, noise_multiplier=1.0, sampling_rate=0.2)
    >>> ledger.step(10)
    >>> round(ledger.epsilon(1e-5), 2)
    6.0
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Sequence

import numpy as np

from stamen.privacy.skellam import skellam_rdp

ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Integer RDP orders: Zhu and Wang's bound holds at integer orders."""


class DpMechanism(enum.StrEnum):
    """Which noise a round adds."""

    GAUSSIAN = "gaussian"
    """Central: continuous Gaussian noise added by the server."""
    SKELLAM = "skellam"
    """Distributed: Skellam noise added by the devices, summed under secure aggregation."""


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def poisson_subsampled_rdp(q: float, rdp_at: Sequence[float], alpha: int) -> float:
    """Zhu and Wang (2019), Theorem 6: the RDP at integer ``alpha`` of a mechanism with
    RDP curve ``rdp_at[j]`` at order ``j`` (``rdp_at[2..alpha]``), Poisson-sampled at ``q``."""
    if q >= 1.0:
        return rdp_at[alpha]
    if q <= 0.0:
        return 0.0
    log_q, log_1q = math.log(q), math.log1p(-q)
    terms = [
        (alpha - 1) * log_1q + math.log(alpha * q - q + 1),
        _log_comb(alpha, 2) + 2 * log_q + (alpha - 2) * log_1q + rdp_at[2],
    ]
    for ell in range(3, alpha + 1):
        terms.append(
            math.log(3)
            + _log_comb(alpha, ell)
            + ell * log_q
            + (alpha - ell) * log_1q
            + (ell - 1) * rdp_at[ell]
        )
    peak = max(terms)
    total = peak + math.log(sum(math.exp(t - peak) for t in terms))
    return total / (alpha - 1)


def round_rdp(
    mechanism: DpMechanism,
    *,
    noise_multiplier: float,
    sampling_rate: float,
    sensitivity: float = 1.0,
    count: int = 1,
) -> np.ndarray:
    """One round's RDP at :data:`ORDERS`.

    For Skellam, ``sensitivity`` is the rounded integer L2 bound and ``count`` the number
    of coordinates (for the L1 bound); the noise variance is ``(z * sensitivity)**2``.
    """
    if noise_multiplier <= 0:
        return np.full(len(ORDERS), np.inf)
    if mechanism is DpMechanism.GAUSSIAN:
        from opacus.accountants.analysis.rdp import compute_rdp  # the server's privacy extra

        return np.asarray(
            compute_rdp(
                q=sampling_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)
            )
        )
    variance = (noise_multiplier * sensitivity) ** 2
    l1 = min(sensitivity**2, math.sqrt(count) * sensitivity)
    curve = [0.0, 0.0] + [skellam_rdp(a, l2=sensitivity, variance=variance, l1=l1) for a in ORDERS]
    return np.array([poisson_subsampled_rdp(sampling_rate, curve, a) for a in ORDERS])


def epsilon_of(rdp: np.ndarray, delta: float) -> float:
    """``epsilon`` at ``delta`` of an RDP curve at :data:`ORDERS`."""
    if not np.all(np.isfinite(rdp)):
        return math.inf
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns when the best order is at an end
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(eps)


class PrivacyLedger:
    """The privacy spent so far by a run's rounds (the accountant's state is its RDP)."""

    def __init__(
        self,
        mechanism: DpMechanism,
        *,
        noise_multiplier: float,
        sampling_rate: float,
        sensitivity: float = 1.0,
        count: int = 1,
    ) -> None:
        self.per_round = round_rdp(
            mechanism,
            noise_multiplier=noise_multiplier,
            sampling_rate=sampling_rate,
            sensitivity=sensitivity,
            count=count,
        )
        self.rounds = 0

    def step(self, rounds: int = 1) -> None:
        """Account ``rounds`` more rounds."""
        self.rounds += rounds

    def epsilon(self, delta: float) -> float:
        """``epsilon`` at ``delta`` after the rounds so far."""
        if self.rounds == 0:
            return 0.0
        return epsilon_of(self.per_round * self.rounds, delta)


def calibrate_noise(
    mechanism: DpMechanism,
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: int,
    sensitivity: float = 1.0,
    count: int = 1,
) -> float:
    """The smallest noise multiplier (to 0.1%) whose ``rounds`` rounds spend ``target_epsilon``."""

    def spent(z: float) -> float:
        rdp = round_rdp(
            mechanism,
            noise_multiplier=z,
            sampling_rate=sampling_rate,
            sensitivity=sensitivity,
            count=count,
        )
        return epsilon_of(rdp * rounds, delta)

    low, high = 0.01, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise reaches epsilon {target_epsilon} in {rounds} rounds")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
