"""Quantization of an update into a small modulus, as secure aggregation sums it.

Secure aggregation adds vectors of integers modulo ``M = 2**bits``; what a device
sends is its update at the round's coordinates, clipped, scaled by the round's
public step ``gamma``, stochastically rounded and reduced modulo ``M``. The server
centres the modular sum into ``[-M/2, M/2)`` and multiplies by ``gamma``. The
sum is exact as long as it does not wrap, which :func:`round_scale` guarantees
(up to six standard deviations of the round's noise) for the round's device count.

The rounding is Kairouz, Liu and Steinke's *conditional* randomized rounding
("The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021, https://arxiv.org/abs/2102.06387, Section 4.1): an unbiased
stochastic rounding, drawn again until the rounded vector's L2 norm is within
:func:`rounded_norm_bound`, so that the integer vector's sensitivity is known
before any noise is added. What clipping and rounding leave out stays in the
device's error-feedback residual (Seide et al. 2014; Karimireddy et al. 2019).

Examples:
    >>> scale = round_scale(bits=16, devices=20, coordinate_bound=0.01, count=100)
    >>> values = np.array([0.004, -0.002, 0.0])
    >>> q = quantize(values, scale, np.random.default_rng(0))
    >>> np.allclose(dequantize_sum(to_residues(q.integers, 16), 16, scale.step), values,
    ...             atol=scale.step)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stamen.compression.bitpack import pack_bits, unpack_bits

MAX_MODULUS_BITS = 32
"""Residues travel as ``uint32`` and are bit-packed by :func:`stamen.compression.pack_bits`."""

ROUNDING_BETA = math.exp(-0.5)
"""The conditional rounding's failure probability per draw (Kairouz et al. use ``e**-0.5``)."""

MAX_ROUNDING_TRIES = 32
"""Draws before falling back to rounding towards zero, which never grows the norm."""

WRAP_STDDEVS = 6.0
"""Headroom kept in the modulus for the round's noise, in its standard deviations."""


@dataclass(frozen=True)
class RoundScale:
    """A round's public quantization: every device of the round uses the same one.

    Attributes:
        step: ``gamma``, the value of one integer unit.
        coordinate_bound: each value is clipped to ``[-B, B]`` before rounding.
        clip: the L2 bound on a device's values (``None``: no L2 clipping).
        norm_bound: the L2 bound on a device's rounded integer vector (its sensitivity).
    """

    step: float
    coordinate_bound: float
    clip: float | None
    norm_bound: float


@dataclass(frozen=True)
class Quantized:
    """One device's integer vector, and what it stands for in float values."""

    integers: np.ndarray
    """int64 values, at most ``coordinate_bound / step`` in magnitude."""
    sent: np.ndarray
    """``integers * step``: what the server's sum contains of this device."""


def rounded_norm_bound(clip_units: float, count: int, beta: float = ROUNDING_BETA) -> float:
    """Kairouz et al.'s bound on a rounded vector's norm, from its norm before rounding.

    ``clip_units`` is the L2 bound in integer units, ``count`` the number of coordinates.
    """
    squared = (
        clip_units**2
        + count / 4
        + math.sqrt(2 * math.log(1 / beta)) * (clip_units + math.sqrt(count) / 2)
    )
    return math.sqrt(squared)


def round_scale(
    *,
    bits: int,
    devices: int,
    coordinate_bound: float,
    count: int,
    clip: float | None = None,
    noise_multiplier: float = 0.0,
) -> RoundScale:
    """The finest step at which ``devices`` clipped vectors plus noise never wrap mod ``2**bits``.

    The noise is ``noise_multiplier`` times the rounded sensitivity, in total over the
    round (distributed DP), and gets :data:`WRAP_STDDEVS` of headroom.
    """
    if not 2 <= bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus bits must be in 2..{MAX_MODULUS_BITS}; got {bits}")
    if devices < 1 or count < 1 or coordinate_bound <= 0:
        raise ValueError("a round needs devices, coordinates and a positive coordinate bound")
    half = 2 ** (bits - 1) - 1
    l2 = clip if clip is not None else coordinate_bound * math.sqrt(count)

    def needed(step: float) -> float:
        noise = noise_multiplier * rounded_norm_bound(l2 / step, count)
        return devices * math.ceil(coordinate_bound / step) + WRAP_STDDEVS * noise

    low, high = coordinate_bound * 1e-9, coordinate_bound * (devices + 1) * 4.0
    if noise_multiplier > 0:
        high *= 1.0 + noise_multiplier * math.sqrt(count)
    if needed(high) > half:
        raise ValueError(
            f"a {bits}-bit modulus cannot hold {devices} devices' values and this noise; "
            "use more modulus bits"
        )
    for _ in range(80):  # bisection on a log scale: `needed` falls as the step grows
        middle = math.sqrt(low * high)
        if needed(middle) <= half:
            high = middle
        else:
            low = middle
    return RoundScale(
        step=high,
        coordinate_bound=coordinate_bound,
        clip=clip,
        norm_bound=rounded_norm_bound(l2 / high, count),
    )


def quantize(values: np.ndarray, scale: RoundScale, rng: np.random.Generator) -> Quantized:
    """Clip (L2, then per coordinate), scale and conditionally round ``values``."""
    clipped = np.asarray(values, np.float64)
    if scale.clip is not None:
        norm = float(np.linalg.norm(clipped))
        if norm > scale.clip:
            clipped = clipped * (scale.clip / norm)
    clipped = np.clip(clipped, -scale.coordinate_bound, scale.coordinate_bound)
    units = clipped / scale.step
    floor = np.floor(units)
    fraction = units - floor
    limit = scale.coordinate_bound / scale.step
    for _ in range(MAX_ROUNDING_TRIES):
        rounded = floor + (rng.random(units.shape) < fraction)
        if float(np.linalg.norm(rounded)) <= scale.norm_bound:
            break
    else:
        rounded = np.trunc(units)  # towards zero: no larger than the clipped norm
    integers = np.clip(rounded, -math.floor(limit), math.floor(limit)).astype(np.int64)
    return Quantized(integers=integers, sent=integers * scale.step)


def to_residues(integers: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers as residues modulo ``2**bits`` (``uint32``)."""
    return np.mod(np.asarray(integers, np.int64), 1 << bits).astype(np.uint32)


def add_residues(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """``(a + b) mod 2**bits``, elementwise."""
    return ((a.astype(np.uint64) + b.astype(np.uint64)) & ((1 << bits) - 1)).astype(np.uint32)


def subtract_residues(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """``(a - b) mod 2**bits``, elementwise."""
    modulus = np.uint64(1 << bits)
    return ((a.astype(np.uint64) + modulus - b.astype(np.uint64)) % modulus).astype(np.uint32)


def centred(residues: np.ndarray, bits: int) -> np.ndarray:
    """Residues as the signed integers in ``[-2**(bits-1), 2**(bits-1))`` they stand for."""
    values = residues.astype(np.int64)
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)


def dequantize_sum(residues: np.ndarray, bits: int, step: float) -> np.ndarray:
    """The float sum a modular sum of quantized vectors stands for."""
    return centred(residues, bits).astype(np.float64) * step


def pack_residues(residues: np.ndarray, bits: int) -> bytes:
    """Residues modulo ``2**bits``, bit-packed at ``bits`` bits each (MSB first)."""
    return pack_bits(residues, bits)


def unpack_residues(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_residues`; refuses a wrong length or non-zero padding
    (:class:`~stamen.core.errors.InvalidUpdate`)."""
    return unpack_bits(data, count, bits)
