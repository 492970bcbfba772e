"""Composable tensor codecs: sparsify, quantize, pack, then a lossless stage.

A :class:`CodecPipeline` is built from stages in this order, each at most once:

1. a sparsifier, ``TopK`` or ``NonZero`` (optional; without one the tensor is sent dense),
2. a value format, ``FP32`` (the default), ``FP16``, ``Uniform``, ``Int8Symmetric``,
   ``Sign``, ``HadamardSign`` or ``SignedLevels``,
3. a lossless stage, ``Zlib`` (optional).

The stages live in :mod:`stamen.compression.codec_stages`; this module composes them, picks
the index encoding, applies the lossless stage and checksums the bytes.

Encoding yields a self-describing ``CompressedTensor`` message; decoding needs
only that message (see :mod:`stamen.compression.tensor_decode`), so a receiver
never has to know the sender's pipeline. The maths is numpy only.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from stamen.compression.bitpack import (
    best_rice_parameter,
    encode_rice,
    encode_varints,
    pack_bits,
    packed_size,
    rice_bit_count,
    varint_sizes,
)
from stamen.compression.codec_stages import (
    EXACT_ZERO,
    FP32,
    VALUE_STAGES,
    NonZero,
    Sparsifier,
    Stage,
    TopK,
    ValueStage,
    Zlib,
)
from stamen.compression.tensor_decode import decode_tensor, index_bits_for
from stamen.core.errors import ConfigError
from stamen.protos.update.v1 import update_pb2 as pb

_DTYPES = {
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.float16): pb.DTYPE_FLOAT16,
    np.dtype(np.float64): pb.DTYPE_FLOAT64,
}


class ValueFormat(enum.StrEnum):
    """How update or model values are stored on the wire."""

    FP32 = "fp32"
    FP16 = "fp16"
    Q8 = "q8"
    Q4 = "q4"
    Q2 = "q2"
    SIGN = "sign"
    """One bit a value and one scale per tensor (with top-k: STC's ternary code)."""
    HADAMARD = "hadamard"
    """One bit a value after a random Hadamard rotation (DRIVE)."""


class CodecScope(enum.StrEnum):
    """What one top-k and one value scale cover."""

    TENSOR = "tensor"
    """Each tensor on its own: the same share of every layer, one header each."""
    MODEL = "model"
    """The whole model as one vector: one threshold picks the largest entries wherever they
    are (layer-adaptive sparsity), and one header serves every tensor."""


class Lossless(enum.StrEnum):
    """The lossless stage applied to the packed bytes."""

    NONE = "none"
    ZLIB = "zlib"


E = TypeVar("E", bound=enum.Enum)


def coerce_choice(
    value: object, choices: type[E], field: str, allowed: Sequence[E] | None = None
) -> E:
    """``value`` as a member of ``choices`` (strings from TOML/CLI are accepted).

    Raises ConfigError naming ``field`` and the allowed values otherwise.
    """
    permitted = list(choices) if allowed is None else list(allowed)
    try:
        member = choices(value)
    except ValueError:
        member = None
    if member is None or member not in permitted:
        names = ", ".join(str(choice.value) for choice in permitted)
        raise ConfigError(f"{field} must be one of {names}; got {value!r}")
    return member


class CodecPipeline:
    """Stages applied in order to turn one tensor into a ``CompressedTensor``.

    Examples:
        >>> from stamen.compression.codec_stages import TopK, Uniform, Zlib
        >>> pipeline = CodecPipeline([TopK(0.5), Uniform(bits=8), Zlib()])
        >>> x = np.array([0.1, -2.0, 0.3, 4.0], dtype=np.float32)
        >>> message = pipeline.encode_tensor("w", x, np.random.default_rng(0))
        >>> decoded = pipeline.decode_tensor(message)
        >>> decoded[[0, 2]].tolist(), bool(abs(decoded[3] - 4.0) < 0.03)
        ([0.0, 0.0], True)
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        rank: dict[type, int] = {TopK: 0, NonZero: 0, Zlib: 2, **dict.fromkeys(VALUE_STAGES, 1)}
        seen: list[int] = []
        for stage in stages:
            position = rank.get(type(stage))
            if position is None:
                raise ConfigError(f"unknown codec stage {stage!r}")
            if seen and position <= seen[-1]:
                raise ConfigError(
                    "codec stages must be: optional TopK or NonZero, at most one value format "
                    f"({', '.join(t.__name__ for t in VALUE_STAGES)}), optional Zlib; "
                    f"got {list(stages)}"
                )
            seen.append(position)
        self.stages = tuple(stages)
        self.sparsifier: Sparsifier | None = next(
            (s for s in stages if isinstance(s, TopK | NonZero)), None
        )
        self.values: ValueStage = next((s for s in stages if isinstance(s, VALUE_STAGES)), FP32())
        self.zlib = next((s for s in stages if isinstance(s, Zlib)), None)

    def __repr__(self) -> str:
        return f"CodecPipeline({list(self.stages)!r})"

    def encode_tensor(
        self,
        name: str,
        array: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        mask: np.ndarray | None = None,
    ) -> pb.CompressedTensor:
        """Encode one tensor. ``mask`` (bool, same shape; True = kept) sends a bitmask
        and only the kept values; it cannot be combined with TopK.

        ``rng`` drives stochastic rounding and is required when that is on.
        """
        return self.encode_and_reconstruct(name, array, rng, mask=mask)[0]

    def encode_and_reconstruct(
        self,
        name: str,
        array: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        mask: np.ndarray | None = None,
    ) -> tuple[pb.CompressedTensor, np.ndarray]:
        """:meth:`encode_tensor`, and the float32 tensor a receiver decodes from the message
        (computed while encoding, not by decoding it)."""
        source = np.asarray(array)
        if source.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {source.dtype} is not float16/32/64")
        flat = np.asarray(source, dtype=np.float32).ravel()
        if not np.all(np.isfinite(flat)):
            raise ValueError(f"tensor {name!r} has NaN or infinite values")
        header = pb.CompressedTensor(
            name=name, shape=[int(d) for d in source.shape], dtype=_DTYPES[source.dtype]
        )
        if mask is not None:
            if self.sparsifier is not None:
                raise ValueError(f"tensor {name!r}: a mask cannot be combined with a sparsifier")
            keep = np.asarray(mask)
            if keep.shape != source.shape or keep.dtype != np.bool_:
                raise ValueError(
                    f"mask for {name!r} must be bool with shape {source.shape}; "
                    f"got {keep.dtype} {keep.shape}"
                )
            message, received = self._encode_kept(header, flat, keep.ravel(), rng)
        elif (positions := self._sparse_positions(flat)) is not None:
            message, received = self._encode_kept(header, flat, positions, rng)
            if isinstance(self.sparsifier, NonZero) and isinstance(self.values, EXACT_ZERO):
                # Lossless either way: where most entries are non-zero, dense is smaller.
                dense = self._encode_kept(header, flat, None, rng)
                if dense[0].ByteSize() < message.ByteSize():
                    message, received = dense
        else:
            message, received = self._encode_kept(header, flat, None, rng)
        return message, received.reshape(source.shape)

    def _encode_kept(
        self,
        header: pb.CompressedTensor,
        flat: np.ndarray,
        where: np.ndarray | None,
        rng: np.random.Generator | None,
    ) -> tuple[pb.CompressedTensor, np.ndarray]:
        """The message keeping ``where`` (a bool mask, sorted positions, or None: all) of
        ``flat``, and the flat float32 tensor a receiver decodes from it."""
        message = pb.CompressedTensor()
        message.CopyFrom(header)
        if where is None:
            message.sparsity = pb.SPARSITY_ENCODING_DENSE
            message.index_encoding = pb.INDEX_ENCODING_NONE
            indices = b""
            kept = flat
        elif where.dtype == np.bool_:
            message.sparsity = pb.SPARSITY_ENCODING_BITMASK
            message.index_encoding = pb.INDEX_ENCODING_NONE
            indices = np.packbits(where).tobytes()
            kept = flat[where]
        else:
            indices = _pack_positions(message, where, flat.size)
            kept = flat[where]
        packed = self.values.pack(kept, rng)
        message.value_encoding = packed.encoding
        message.bits = packed.bits
        message.scale = packed.scale
        message.zero_point = packed.zero_point
        message.rotation_seed = packed.rotation_seed
        message.num_values = kept.size
        message.indices_size = len(indices)
        _finish(message, indices, packed.data, self.zlib)
        if where is None:
            return message, packed.decoded
        received = np.zeros(flat.size, dtype=np.float32)
        received[where] = packed.decoded
        return message, received

    def _sparse_positions(self, flat: np.ndarray) -> np.ndarray | None:
        """The kept positions, or None when the tensor goes dense."""
        if isinstance(self.sparsifier, TopK):
            if self.sparsifier.keep_count(flat.size) >= flat.size:
                return None
            return self.sparsifier.select(flat)
        if isinstance(self.sparsifier, NonZero):
            positions = self.sparsifier.select(flat)
            return None if positions.size == flat.size else positions
        return None

    def decode_tensor(
        self, message: pb.CompressedTensor, expected_shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Decode a tensor (any pipeline's); raises ``InvalidUpdate`` on bad input."""
        return decode_tensor(message, expected_shape=expected_shape)


def _pack_positions(message: pb.CompressedTensor, positions: np.ndarray, size: int) -> bytes:
    """A bitmask or an index list of ``positions``, whichever is smaller; sets ``sparsity``."""
    message.sparsity = pb.SPARSITY_ENCODING_INDICES
    indices = _pack_indices(message, positions, size)
    if len(indices) > (size + 7) // 8:
        message.sparsity = pb.SPARSITY_ENCODING_BITMASK
        message.index_encoding = pb.INDEX_ENCODING_NONE
        message.index_bits = 0
        keep = np.zeros(size, dtype=bool)
        keep[positions] = True
        return np.packbits(keep).tobytes()
    return indices


def _pack_indices(message: pb.CompressedTensor, positions: np.ndarray, size: int) -> bytes:
    """Pick the smallest of fixed-width indices, varint gaps and Rice-coded gaps.

    Records the choice (and the index width or Rice parameter) in ``message``;
    on a tie the simpler encoding wins. Top-k gaps are close to geometric, for
    which Rice codes come within a few percent of the entropy.
    """
    gaps = np.diff(positions, prepend=-1) - 1
    width = index_bits_for(size)
    rice_k = best_rice_parameter(gaps)
    bitpacked_bytes = packed_size(positions.size, width)
    varint_bytes = int(varint_sizes(gaps).sum())
    rice_bytes = packed_size(rice_bit_count(gaps, rice_k), 1)
    if bitpacked_bytes <= min(varint_bytes, rice_bytes):
        message.index_encoding = pb.INDEX_ENCODING_BITPACKED
        message.index_bits = width
        return pack_bits(positions, width)
    if varint_bytes <= rice_bytes:
        message.index_encoding = pb.INDEX_ENCODING_VARINT_GAPS
        return encode_varints(gaps)
    message.index_encoding = pb.INDEX_ENCODING_RICE_GAPS
    message.index_bits = rice_k
    return encode_rice(gaps, rice_k)


def _finish(
    message: pb.CompressedTensor, indices: bytes, values: bytes, stage: Zlib | None
) -> None:
    """Apply the lossless stage where it pays off, then checksum the bytes as sent."""
    message.lossless = pb.LOSSLESS_NONE
    if stage is not None:
        squeezed_indices = zlib.compress(indices, stage.level) if indices else b""
        squeezed_values = zlib.compress(values, stage.level) if values else b""
        if len(squeezed_indices) + len(squeezed_values) < len(indices) + len(values):
            message.lossless = pb.LOSSLESS_ZLIB
            indices, values = squeezed_indices, squeezed_values
    message.indices = indices
    message.values = values
    message.crc32 = zlib.crc32(values, zlib.crc32(indices))
