"""The accountant's epsilon, checked against independent computations."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from stamen.privacy import (
    DpMechanism,
    calibrate_noise,
    epsilon_of,
    poisson_subsampled_rdp,
    round_rdp,
)
from stamen.privacy.accounting import ORDERS


def exact_gaussian_delta(epsilon: float, mu: float) -> float:
    """Balle and Wang (2018), Theorem 8: the exact delta(epsilon) of a Gaussian mechanism
    with sensitivity-to-noise ratio ``mu`` (composition of T rounds: mu = sqrt(T) / z)."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


def test_full_participation_matches_the_closed_form_rdp_and_brackets_the_exact_epsilon() -> None:
    z, rounds, delta = 2.0, 50, 1e-5
    rdp = round_rdp(DpMechanism.GAUSSIAN, noise_multiplier=z, sampling_rate=1.0) * rounds
    closed_form = np.array([a * rounds / (2 * z * z) for a in ORDERS])
    assert np.allclose(rdp, closed_form, rtol=1e-9)
    epsilon = epsilon_of(rdp, delta)
    # The same conversion by hand (Balle et al. 2020, Theorem 21).
    by_hand = min(
        r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        for a, r in zip(ORDERS, closed_form, strict=True)
    )
    assert epsilon == pytest.approx(by_hand, rel=1e-9)
    # RDP is an upper bound: the exact epsilon at this delta is smaller, but not by much.
    mu = math.sqrt(rounds) / z
    assert exact_gaussian_delta(epsilon, mu) <= delta
    assert exact_gaussian_delta(epsilon * 0.8, mu) > delta


def test_zhu_wang_bound_holds_above_the_exact_sampled_gaussian() -> None:
    q, z = 0.2, 1.0
    exact = round_rdp(DpMechanism.GAUSSIAN, noise_multiplier=z, sampling_rate=q)
    gaussian_curve = [0.0, 0.0] + [a / (2 * z * z) for a in ORDERS]
    general = np.array([poisson_subsampled_rdp(q, gaussian_curve, a) for a in ORDERS])
    assert np.all(general >= exact - 1e-9)
    assert epsilon_of(general * 20, 1e-5) < 1.5 * epsilon_of(exact * 20, 1e-5)


def test_skellam_with_large_sensitivity_is_accounted_like_the_gaussian() -> None:
    args = {"noise_multiplier": 1.2, "sampling_rate": 0.2}
    skellam = epsilon_of(
        round_rdp(DpMechanism.SKELLAM, sensitivity=4000.0, count=2000, **args) * 50, 1e-5
    )
    gaussian = epsilon_of(round_rdp(DpMechanism.GAUSSIAN, **args) * 50, 1e-5)
    assert gaussian <= skellam <= 1.5 * gaussian


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_target_epsilon_sets_the_noise_that_spends_it(target: float) -> None:
    z = calibrate_noise(
        DpMechanism.GAUSSIAN, target_epsilon=target, delta=1e-5, sampling_rate=0.2, rounds=30
    )
    spent = epsilon_of(
        round_rdp(DpMechanism.GAUSSIAN, noise_multiplier=z, sampling_rate=0.2) * 30, 1e-5
    )
    assert target * 0.98 <= spent <= target
