"""The uplink codec: a device's model delta to bytes, and back on the server.

Top-k sparsification (per tensor, or over the whole model as one vector), low-bit values
(stochastic rounding, signs, or signs after a random rotation), optional error feedback
with DGC's momentum correction, and a final zlib stage, as configured by
:class:`UplinkCodecConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stamen.compression.codec_stages import (
    FP16,
    FP32,
    HadamardSign,
    Sign,
    Stage,
    TopK,
    Uniform,
    Zlib,
)
from stamen.compression.codecs import (
    CodecPipeline,
    CodecScope,
    Lossless,
    ValueFormat,
    coerce_choice,
)
from stamen.compression.error_feedback import ErrorFeedback
from stamen.compression.flat_update import FlatLayout, decode_flat_update, encode_tensors
from stamen.compression.wire import (
    FORMAT_VERSION,
    decode_tensors,
    hash_to_bytes,
    parse,
    serialize,
)
from stamen.core.errors import ConfigError, InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

_UNIFORM_BITS = {ValueFormat.Q8: 8, ValueFormat.Q4: 4, ValueFormat.Q2: 2}


@dataclass(frozen=True)
class UplinkCodecConfig:
    """How devices compress their updates.

    ``topk_ratio`` 1.0 sends every entry (no index overhead); ``values`` q8/q4/q2
    are per-tensor affine quantization of the kept values, ``sign`` one bit and one scale
    (STC's ternary code after top-k), ``hadamard`` one bit after a random rotation (DRIVE).
    ``scope`` ``model`` runs one top-k and one value scale over the whole model as a single
    vector (layer-adaptive sparsity, one header); with ``tensor_scales`` its kept values
    still get a scale per tensor (a float16 each), where they share one by default, and
    with ``whole_vectors`` its 1-D tensors (biases, normalization weights and statistics)
    go whole, one bit an entry at their own scale, as outsized tensors do. ``momentum`` > 0
    is DGC's momentum correction (needs error feedback), and ``warmup_rounds`` starts from a
    denser top-k that falls geometrically to ``topk_ratio`` (DGC's warm-up; the server
    applies it).
    """

    topk_ratio: float = 1.0
    values: ValueFormat = ValueFormat.FP32
    error_feedback: bool = False
    lossless: Lossless = Lossless.NONE
    stochastic_rounding: bool = True
    scope: CodecScope = CodecScope.TENSOR
    tensor_scales: bool = False
    whole_vectors: bool = False
    momentum: float = 0.0
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        ratio = self.topk_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(f"topk_ratio must be in (0, 1]; got {ratio!r}")
        object.__setattr__(self, "topk_ratio", float(ratio))
        object.__setattr__(self, "values", coerce_choice(self.values, ValueFormat, "values"))
        object.__setattr__(self, "lossless", coerce_choice(self.lossless, Lossless, "lossless"))
        object.__setattr__(self, "scope", coerce_choice(self.scope, CodecScope, "scope"))
        for field in ("error_feedback", "stochastic_rounding", "tensor_scales", "whole_vectors"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field} must be true or false; got {getattr(self, field)!r}")
        for field in ("tensor_scales", "whole_vectors"):
            if getattr(self, field) and self.scope != CodecScope.MODEL:
                raise ConfigError(f'{field} shapes a whole-model update: it needs scope = "model"')
        momentum = self.momentum
        if isinstance(momentum, bool) or not isinstance(momentum, int | float):
            raise ConfigError(f"momentum must be a number in [0, 1); got {momentum!r}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1); got {momentum!r}")
        if momentum > 0 and not self.error_feedback:
            raise ConfigError("momentum (DGC's momentum correction) needs error_feedback = true")
        object.__setattr__(self, "momentum", float(momentum))
        warmup = self.warmup_rounds
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"warmup_rounds must be an integer >= 0; got {warmup!r}")

    def ratio_at(self, round_num: int) -> float:
        """The top-k ratio of ``round_num`` (1-based) under the warm-up.

        Round ``r <= warmup_rounds`` keeps ``topk_ratio ** (r / (warmup_rounds + 1))``, a
        geometric fall from nearly dense to the target (DGC's schedule, per round).

        Examples:
            >>> config = UplinkCodecConfig(topk_ratio=0.01, warmup_rounds=3)
            >>> [round(config.ratio_at(r), 4) for r in (1, 2, 3, 4, 50)]
            [0.3162, 0.1, 0.0316, 0.01, 0.01]
        """
        if self.warmup_rounds == 0 or round_num > self.warmup_rounds or round_num < 1:
            return self.topk_ratio
        return self.topk_ratio ** (round_num / (self.warmup_rounds + 1))

    def at_round(self, round_num: int) -> UplinkCodecConfig:
        """This config with the top-k ratio of ``round_num``, as a device receives it."""
        ratio = self.ratio_at(round_num)
        return self if ratio == self.topk_ratio else dataclasses.replace(self, topk_ratio=ratio)

    def pipeline(self) -> CodecPipeline:
        """The codec stages this config describes."""
        stages: list[Stage] = []
        if self.topk_ratio < 1.0:
            stages.append(TopK(self.topk_ratio))
        if self.values == ValueFormat.FP16:
            stages.append(FP16())
        elif self.values in _UNIFORM_BITS:
            stages.append(Uniform(_UNIFORM_BITS[self.values], self.stochastic_rounding))
        elif self.values == ValueFormat.SIGN:
            stages.append(Sign())
        elif self.values == ValueFormat.HADAMARD:
            stages.append(HadamardSign())
        else:
            stages.append(FP32())
        if self.lossless == Lossless.ZLIB:
            stages.append(Zlib())
        return CodecPipeline(stages)


@dataclass(frozen=True)
class EncodedUpdate:
    """An encoded update, and the residual to keep for the next round (error feedback only)."""

    payload: bytes
    residual: dict[str, np.ndarray] | None
    velocity: dict[str, np.ndarray] | None = None
    """DGC's momentum to keep (momentum correction only)."""


@dataclass(frozen=True)
class DecodedUpdate:
    """A validated update: float32 deltas of the expected shapes."""

    round_num: int
    base_model_hash: str
    tensors: dict[str, np.ndarray]


class UplinkCodec:
    """Encodes model deltas on a device.

    Examples:
        >>> codec = UplinkCodec(UplinkCodecConfig(topk_ratio=0.1, values=ValueFormat.Q4))
        >>> delta = {"w": np.linspace(-1, 1, 1000, dtype=np.float32)}
        >>> encoded = codec.encode(delta, round_num=3, base_model_hash="0" * 64,
        ...                        residual=None, rng=np.random.default_rng(0))
        >>> len(encoded.payload) < 4 * 1000 / 10  # dense float32 is 4000 bytes
        True
        >>> update = decode_update(encoded.payload, expected_shapes={"w": (1000,)})
        >>> update.round_num, int(np.count_nonzero(update.tensors["w"]))
        (3, 100)
    """

    def __init__(self, config: UplinkCodecConfig) -> None:
        self.config = config
        self.pipeline = config.pipeline()
        self.layout = FlatLayout(config.tensor_scales, config.whole_vectors)

    def encode(
        self,
        delta: Mapping[str, np.ndarray],
        *,
        round_num: int,
        base_model_hash: str,
        residual: Mapping[str, np.ndarray] | None,
        rng: np.random.Generator,
        velocity: Mapping[str, np.ndarray] | None = None,
    ) -> EncodedUpdate:
        """Encode ``delta`` (computed against the model ``base_model_hash`` names).

        With error feedback, ``residual`` (None on the first round) is added before
        encoding and the new residual is returned; without, ``residual`` is ignored.
        With momentum correction, ``velocity`` is the device's DGC momentum (None on the
        first round) and the next one is returned. Under ``scope = model`` the tensors go
        as one vector, in ``delta``'s order, which must be the order of the model payload
        the delta answers.
        """
        if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
            raise ValueError(f"round_num must be a non-negative int; got {round_num!r}")
        flat = self.config.scope == CodecScope.MODEL
        envelope = pb.ModelUpdate(
            format_version=FORMAT_VERSION,
            round=round_num,
            base_model_sha256=hash_to_bytes(base_model_hash),
            flat=flat,
        )
        new_residual = new_velocity = None
        if self.config.error_feedback:
            feedback = ErrorFeedback(
                self.pipeline, self.config.momentum, flat=flat, layout=self.layout
            )
            result = feedback.encode(delta, residual, rng, velocity)
            tensors, scales, dense = result.tensors, result.scales, result.dense
            new_residual, new_velocity = result.residual, result.velocity
        else:
            encoded = encode_tensors(self.pipeline, delta, rng, flat=flat, layout=self.layout)
            tensors, scales, dense = encoded.messages, encoded.scales, encoded.dense
        envelope.tensors.extend(tensors)
        envelope.scales = scales
        envelope.dense = dense
        return EncodedUpdate(serialize(envelope), new_residual, new_velocity)


def decode_update(
    payload: bytes,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int = 64 * 2**20,
) -> DecodedUpdate:
    """Validate and decode an update from an untrusted device.

    The tensor names and shapes must be exactly ``expected_shapes``, the model the
    server sent: they bound the payload's size, its tensor count and everything decoded
    from it. Raises only :class:`stamen.core.errors.InvalidUpdate`, with a one-line reason.

    Examples:
        >>> codec = UplinkCodec(UplinkCodecConfig(values="fp32", error_feedback=False))
        >>> payload = codec.encode({"w": np.ones(3, np.float32)}, round_num=1,
        ...     base_model_hash="ab" * 32, residual=None, rng=np.random.default_rng(0)).payload
        >>> decode_update(payload, expected_shapes={"w": (3,)}).tensors["w"].tolist()
        [1.0, 1.0, 1.0]
        >>> decode_update(payload, expected_shapes={"w": (4,)})
        Traceback (most recent call last):
        ...
        stamen.core.errors.ShapeMismatch: ...
    """
    envelope = parse(pb.ModelUpdate, payload, max_bytes, expected_shapes=expected_shapes)
    if envelope.flat:
        tensors = decode_flat_update(
            envelope.tensors, envelope.scales, envelope.dense, expected_shapes
        )
    else:
        if envelope.scales or envelope.dense:
            raise InvalidUpdate("scales and dense masks are for flat updates only")
        tensors, _ = decode_tensors(envelope.tensors, expected_shapes)
    return DecodedUpdate(envelope.round, envelope.base_model_sha256.hex(), tensors)


def update_base_hash(
    payload: bytes, *, expected_shapes: Mapping[str, tuple[int, ...]], max_bytes: int
) -> str | None:
    """The model hash an update says it was computed against, read without decoding its
    tensors; None if the bytes are not an update of these shapes."""
    try:
        envelope = parse(pb.ModelUpdate, payload, max_bytes, expected_shapes=expected_shapes)
    except InvalidUpdate:
        return None
    return envelope.base_model_sha256.hex()
