"""The Skellam mechanism: discrete noise that devices add under secure aggregation.

Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021, https://arxiv.org/abs/2110.04995. Each device adds, to every
integer coordinate it sends, the difference of two Poisson(mu/2) draws: symmetric
Skellam noise of variance ``mu``. Skellam noise is closed under summation, so the
secure sum of ``n`` devices carries Skellam noise of variance ``n * mu`` exactly: no
approximation where the noise shares meet, unlike summed discrete Gaussians.

Its Rényi DP (Theorem 3.5 of the paper's arXiv version): adding Skellam noise of
variance ``mu`` to an integer query of L2 sensitivity ``l2`` and L1 sensitivity ``l1``
is ``(alpha, eps(alpha))``-RDP with

    eps(alpha) = alpha * l2**2 / (2 mu)
                 + min(((2 alpha - 1) l2**2 + 6 l1) / (16 mu**2), 3 l1 / (4 mu)),

the Gaussian's curve plus a term that vanishes as the noise grows.

Examples:
    >>> noise = skellam_noise(np.random.default_rng(0), variance=100.0, size=20000)
    >>> noise.dtype, abs(float(noise.var()) - 100.0) < 5.0
    (dtype('int64'), True)
    >>> round(skellam_rdp(2, l2=10.0, variance=1e4), 6)
    0.010001
"""

from __future__ import annotations

import math

import numpy as np


def skellam_noise(rng: np.random.Generator, *, variance: float, size: int) -> np.ndarray:
    """``size`` draws of symmetric Skellam noise of ``variance`` (int64)."""
    if variance <= 0:
        return np.zeros(size, np.int64)
    half = variance / 2
    return rng.poisson(half, size).astype(np.int64) - rng.poisson(half, size).astype(np.int64)


def l1_sensitivity(l2: float, count: int) -> float:
    """The L1 bound of an integer vector of ``count`` coordinates with L2 norm ``l2``."""
    return min(l2**2, math.sqrt(count) * l2)


def skellam_rdp(alpha: float, *, l2: float, variance: float, l1: float | None = None) -> float:
    """The Skellam mechanism's RDP at order ``alpha`` (Agarwal et al. 2021, Theorem 3.5)."""
    l1 = l2**2 if l1 is None else l1
    gaussian = alpha * l2**2 / (2 * variance)
    extra = min(((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * variance**2), 3 * l1 / (4 * variance))
    return gaussian + extra
