"""The stages a :class:`~stamen.compression.codecs.CodecPipeline` composes.

A sparsifier picks which entries travel (:class:`TopK`, :class:`NonZero`); a value format
turns the kept float32 values into wire bytes (:class:`FP32`, :class:`FP16`,
:class:`Uniform`, :class:`Int8Symmetric`, :class:`Sign`, :class:`HadamardSign`,
:class:`SignedLevels`) and reports what a receiver will decode from them; a lossless stage
(:class:`Zlib`) names the compressor the pipeline runs over the packed bytes. Each stage is a
frozen dataclass that validates its parameters when built.

Examples:
    >>> packed = Uniform(bits=2, stochastic=False).pack(
    ...     np.array([0.0, 1.0, 3.0], dtype=np.float32), rng=None)
    >>> packed.bits, packed.decoded.tolist()
    (2, [0.0, 1.0, 3.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from stamen.compression.bitpack import pack_bits
from stamen.compression.hadamard import rotate_and_sign, unrotate
from stamen.compression.levels import pack_levels, zigzag
from stamen.compression.tensor_decode import (
    LEVEL_BITS,
    decode_signs,
    dequantize,
    is_power_of_two,
)
from stamen.core.errors import ConfigError
from stamen.protos.update.v1 import update_pb2 as pb

UNIFORM_BITS = (2, 4, 8)
_NO_VALUES = np.zeros(0, dtype=np.float32)
_SMALL_TENSOR = 256


@dataclass(frozen=True)
class TopK:
    """Keep the ``ceil(ratio * n)`` largest-magnitude entries (at least one)."""

    ratio: float

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, int | float) and 0.0 < self.ratio <= 1.0):
            raise ConfigError(f"topk ratio must be in (0, 1]; got {self.ratio!r}")

    def keep_count(self, size: int) -> int:
        """How many of ``size`` entries survive; the epsilon absorbs float noise in ratio*n."""
        return min(size, max(1, math.ceil(self.ratio * size - 1e-9)))

    def select(self, flat: np.ndarray) -> np.ndarray:
        """Sorted positions of the kept entries of a 1-D array."""
        k = self.keep_count(flat.size)
        if k >= flat.size:
            return np.arange(flat.size, dtype=np.int64)
        if flat.size <= _SMALL_TENSOR:  # a bias: sorting beats torch's call overhead
            return np.sort(np.argsort(-np.abs(flat), kind="stable")[:k]).astype(np.int64)
        # Not np.argpartition: its introselect slows down 10x or more on a delta with many
        # exact zeros (pruned weights) and repeats (an fp16 residual), as trained deltas have.
        magnitudes = torch.from_numpy(np.abs(flat))
        largest = torch.topk(magnitudes, k, sorted=False).indices.numpy()
        return np.sort(largest).astype(np.int64)


@dataclass(frozen=True)
class NonZero:
    """Keep exactly the non-zero entries: lossless sparsity for values already sparse
    (the downlink's deltas, a pruned model)."""

    def select(self, flat: np.ndarray) -> np.ndarray:
        """Sorted positions of the non-zero entries of a 1-D array."""
        return np.flatnonzero(flat).astype(np.int64)


@dataclass(frozen=True)
class PackedValues:
    """Values as they go on the wire, with the fields needed to decode them."""

    encoding: pb.ValueEncoding
    bits: int
    scale: float
    zero_point: float
    data: bytes
    decoded: np.ndarray
    """The float32 values a receiver decodes from ``data``."""
    rotation_seed: int = 0


@dataclass(frozen=True)
class FP32:
    """Values as little-endian float32 (lossless for float32 input)."""

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Encode float32 values."""
        exact = values.astype("<f4")
        return PackedValues(
            pb.VALUE_ENCODING_FP32, 32, 0.0, 0.0, exact.tobytes(), exact.astype(np.float32)
        )


@dataclass(frozen=True)
class FP16:
    """Values as little-endian float16: relative error at most 2**-11 in the normal range."""

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Encode float32 values; values beyond the float16 range are an error."""
        if values.size and float(np.max(np.abs(values))) > float(np.finfo(np.float16).max):
            raise ValueError("a value exceeds the float16 range (65504); use fp32")
        half = values.astype("<f2")
        return PackedValues(
            pb.VALUE_ENCODING_FP16, 16, 0.0, 0.0, half.tobytes(), half.astype(np.float32)
        )


@dataclass(frozen=True)
class Uniform:
    """Per-tensor affine quantization to ``2**bits`` levels between min and max.

    With ``stochastic=True`` each value rounds up with probability equal to its
    fractional position between two levels, so the decoded value is unbiased
    (E[decode(x)] == x) and the error is below one step (``scale``). Otherwise it
    rounds to the nearest level (error at most ``scale / 2``).
    """

    bits: int = 8
    stochastic: bool = True

    def __post_init__(self) -> None:
        if self.bits not in UNIFORM_BITS:
            raise ConfigError(f"bits must be one of 2, 4, 8; got {self.bits!r}")

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Quantize float32 values and bit-pack the levels."""
        top = (1 << self.bits) - 1
        if values.size == 0:
            return PackedValues(pb.VALUE_ENCODING_UNIFORM, self.bits, 0.0, 0.0, b"", _NO_VALUES)
        low = float(np.min(values))  # exact: values are float32
        high = float(np.max(values))
        scale = _step_covering(high - low, top)
        if scale == 0.0:
            levels = np.zeros(values.size, dtype=np.uint64)
        else:
            position = np.clip((values.astype(np.float64) - low) / scale, 0.0, top)
            if self.stochastic:
                if rng is None:
                    raise ValueError("stochastic rounding needs an rng")
                position = np.floor(position + rng.random(values.size))
            else:
                position = np.rint(position)
            levels = np.minimum(position, top).astype(np.uint64)
        data = pack_bits(levels, self.bits)
        decoded = dequantize(levels, scale, low)
        return PackedValues(pb.VALUE_ENCODING_UNIFORM, self.bits, scale, low, data, decoded)


@dataclass(frozen=True)
class Int8Symmetric:
    """Per-tensor symmetric int8 (levels -127..127, no zero point): 0 stays exactly 0."""

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Round float32 values to the nearest of 255 symmetric levels."""
        if values.size == 0:
            return PackedValues(pb.VALUE_ENCODING_INT8_SYMMETRIC, 8, 0.0, 0.0, b"", _NO_VALUES)
        scale = _step_covering(float(np.max(np.abs(values))), 127)
        if scale == 0.0:
            levels = np.zeros(values.size, dtype=np.int8)
        else:
            levels = np.clip(np.rint(values.astype(np.float64) / scale), -127, 127)
            levels = levels.astype(np.int8)
        return PackedValues(
            pb.VALUE_ENCODING_INT8_SYMMETRIC,
            8,
            scale,
            0.0,
            levels.tobytes(),
            dequantize(levels, scale),
        )


@dataclass(frozen=True)
class Sign:
    """One bit a value: ``+scale`` or ``-scale``, with ``scale`` the mean magnitude.

    After top-k this is STC's ternary code (Sattler et al., "Robust and
    Communication-Efficient Federated Learning from Non-IID Data", IEEE TNNLS 2019,
    https://arxiv.org/abs/1903.02891): the kept values are the largest, so their
    magnitudes are close to each other and their mean loses little; error feedback carries
    the rest to later rounds.
    """

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Encode float32 values as their signs and one scale."""
        if values.size == 0:
            return PackedValues(pb.VALUE_ENCODING_SIGN, 1, 0.0, 0.0, b"", _NO_VALUES)
        scale = float(np.float32(np.mean(np.abs(values.astype(np.float64)))))
        if not math.isfinite(scale):
            raise ValueError("value magnitudes too large for a float32 scale")
        positive = (values >= 0).astype(np.uint8)
        data = np.packbits(positive).tobytes()
        return PackedValues(
            pb.VALUE_ENCODING_SIGN, 1, scale, 0.0, data, decode_signs(data, values.size, scale)
        )


@dataclass(frozen=True)
class HadamardSign:
    """One bit a value after a random Hadamard rotation (DRIVE; see
    :mod:`stamen.compression.hadamard`), with one float32 scale per power-of-two segment.

    Its error does not depend on how the values are spread: about 0.57 of their energy
    for any input, where :class:`Sign` loses much less on top-k's similar magnitudes and
    much more on spread-out dense values.
    """

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Rotate, keep the signs and the scales; ``rng`` draws the rotation's seed."""
        if rng is None:
            raise ValueError("the random rotation needs an rng")
        seed = int(rng.integers(0, 2**63))
        scales, signs = rotate_and_sign(values, seed)
        if not np.all(np.isfinite(scales)):
            raise ValueError("value magnitudes too large for a float32 scale")
        data = scales.astype("<f4").tobytes() + np.packbits(signs).tobytes()
        decoded = unrotate(scales, signs, seed)
        return PackedValues(pb.VALUE_ENCODING_HADAMARD_SIGN, 1, 0.0, 0.0, data, decoded, seed)


@dataclass(frozen=True)
class SignedLevels:
    """Values that are already integer multiples of a power-of-two ``step``, sent exactly
    as signed integers at the fewest bits that hold them.

    A float32 on such a grid, and any sum of them, is exact while the levels stay below
    2**24, so a receiver that adds these values to a model on the same grid rebuilds the
    sender's model bit for bit: this is the downlink's delta format.
    """

    step: float

    def __post_init__(self) -> None:
        if not (self.step == 0.0 or is_power_of_two(self.step)):
            raise ConfigError(f"grid step must be 0 or a power of two; got {self.step!r}")

    def pack(self, values: np.ndarray, rng: np.random.Generator | None) -> PackedValues:
        """Encode values on the grid; a value off the grid is a ValueError."""
        if values.size == 0 or self.step == 0.0:
            if values.size and np.any(values != 0):
                raise ValueError("non-zero values need a non-zero grid step")
            levels = np.zeros(values.size, dtype=np.int64)
        else:
            exact = values.astype(np.float64) / self.step
            levels = np.rint(exact).astype(np.int64)
            if np.any(levels != exact):
                raise ValueError("a value is not a multiple of the grid step")
        codes = zigzag(levels)
        widest = int(codes.max()).bit_length() if codes.size else 0
        bits = next((width for width in LEVEL_BITS if widest <= width), None)
        if bits is None:
            raise ValueError(f"a level needs more than {LEVEL_BITS[-1]} bits")
        decoded = dequantize(levels, self.step)
        return PackedValues(
            pb.VALUE_ENCODING_SIGNED_LEVELS, bits, self.step, 0.0, pack_levels(codes, bits), decoded
        )


@dataclass(frozen=True)
class Zlib:
    """zlib over the packed index and value bytes, skipped per tensor when it would not shrink."""

    level: int = 6

    def __post_init__(self) -> None:
        if not (isinstance(self.level, int) and 0 <= self.level <= 9):
            raise ConfigError(f"zlib level must be in 0..9; got {self.level!r}")


ValueStage = FP32 | FP16 | Uniform | Int8Symmetric | Sign | HadamardSign | SignedLevels
Sparsifier = TopK | NonZero
Stage = Sparsifier | ValueStage | Zlib
VALUE_STAGES = (FP32, FP16, Uniform, Int8Symmetric, Sign, HadamardSign, SignedLevels)
EXACT_ZERO = (FP32, FP16, Int8Symmetric, SignedLevels)
"""Value stages that send 0 as exactly 0 (so a dense tensor can stand for a sparse one)."""
"""The value-format stage types, one of which every pipeline holds."""


def _step_covering(span: float, top: int) -> float:
    """The smallest float32 step with ``top * step >= span``, so the largest value is a level."""
    if span <= 0.0:
        return 0.0
    step = np.float32(span / top)
    if not np.isfinite(step):
        raise ValueError("value range too large for a float32 quantization step")
    if float(step) * top < span:
        step = np.nextafter(step, np.float32(np.inf))
    return float(step)
