"""The downlink codec: the global model to bytes for devices, and back on the device.

Values go as fp32, fp16 or symmetric int8 (q8, so pruned zeros stay exactly 0).
Where the server pruned a tensor it sends a packed bitmask and only the kept
values. The payload names the SHA-256 of the model the receiver will rebuild,
and the receiver checks it, which catches corruption and codec bugs alike.

With ``deltas`` on, training payloads come from a
:class:`~stamen.compression.delta_downlink.DeltaPublisher` instead: each device gets the
change since the model it kept, or the whole model where that is smaller.
:func:`decode_model` takes the kept model (``base``) and checks that the sum hashes to
exactly the model the server holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from stamen.compression.codec_stages import FP16, FP32, Int8Symmetric, Stage, Zlib
from stamen.compression.codecs import CodecPipeline, Lossless, ValueFormat, coerce_choice
from stamen.compression.hashing import model_hash
from stamen.compression.tensor_decode import is_power_of_two
from stamen.compression.wire import (
    FORMAT_VERSION,
    decode_flat,
    decode_tensors,
    hash_to_bytes,
    parse,
    serialize,
)
from stamen.core.errors import ConfigError, InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

DOWNLINK_VALUE_FORMATS = (ValueFormat.FP32, ValueFormat.FP16, ValueFormat.Q8)


@dataclass(frozen=True)
class DownlinkCodecConfig:
    """How the server compresses the model it sends; q8 is symmetric per-tensor int8.

    With ``deltas`` the training payloads are the change since the model each device kept
    (:mod:`stamen.compression.delta_downlink`): the server keeps a replica of the model
    on a power-of-two grid of ``grid_bits`` bits per tensor and moves it toward the global
    model each round: an entry moves once it is ``move_threshold`` grid steps or more
    away, and at most ``topk_ratio`` of each tensor's entries move (what is left waits for
    later rounds: error feedback on the server). The last ``history_rounds`` moves are
    kept to build catch-up deltas.
    ``values`` and ``lossless`` then only apply to models no device keeps (federated
    evaluation, distillation students). The server remembers which model each of at most
    ``tracked_devices`` devices holds; a device it forgot gets the whole model.
    """

    values: ValueFormat = ValueFormat.FP32
    lossless: Lossless = Lossless.NONE
    deltas: bool = False
    grid_bits: int = 8
    move_threshold: float = 0.5
    topk_ratio: float = 1.0
    history_rounds: int = 32
    tracked_devices: int = 65536

    def __post_init__(self) -> None:
        values = coerce_choice(self.values, ValueFormat, "values", DOWNLINK_VALUE_FORMATS)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "lossless", coerce_choice(self.lossless, Lossless, "lossless"))
        if not isinstance(self.deltas, bool):
            raise ConfigError(f"deltas must be true or false; got {self.deltas!r}")
        for name, low, high in (
            ("grid_bits", 2, 16),
            ("history_rounds", 0, 10_000),
            ("tracked_devices", 0, 10**8),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in {low}..{high}; got {value!r}")
        ratio = self.topk_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(f"topk_ratio must be in (0, 1]; got {ratio!r}")
        object.__setattr__(self, "topk_ratio", float(ratio))
        threshold = self.move_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0.5 <= threshold <= 64
        ):
            raise ConfigError(f"move_threshold must be in [0.5, 64] grid steps; got {threshold!r}")
        object.__setattr__(self, "move_threshold", float(threshold))

    def pipeline(self) -> CodecPipeline:
        """The codec stages this config describes."""
        value_stage: dict[ValueFormat, type[FP32 | FP16 | Int8Symmetric]] = {
            ValueFormat.FP32: FP32,
            ValueFormat.FP16: FP16,
            ValueFormat.Q8: Int8Symmetric,
        }
        stages: list[Stage] = [value_stage[self.values]()]
        if self.lossless == Lossless.ZLIB:
            stages.append(Zlib())
        return CodecPipeline(stages)


@dataclass(frozen=True)
class EncodedModel:
    """An encoded model, its hash, and exactly what every receiver will reconstruct."""

    payload: bytes
    model_hash: str
    decoded: dict[str, np.ndarray]


@dataclass(frozen=True)
class DecodedModel:
    """A verified model; ``masks`` holds the bool masks (True = kept) of pruned tensors."""

    round_num: int
    model_hash: str
    tensors: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    keep: bool = False
    """The server asked the device to keep this model: later payloads may be deltas to it."""
    was_delta: bool = False
    """It was rebuilt from a delta to a kept model."""
    steps: dict[str, float] = field(default_factory=dict)
    """Per tensor, a power-of-two step every value is a multiple of (signed-level payloads
    only): what the device needs to store the model compactly and exactly."""


class DownlinkCodec:
    """Encodes the global model on the server.

    Examples:
        >>> model = {"w": np.arange(8, dtype=np.float32) - 4, "b": np.ones(2, np.float32)}
        >>> masks = {"w": model["w"] > 0}
        >>> encoded = DownlinkCodec(DownlinkCodecConfig(values=ValueFormat.Q8)).encode(
        ...     model, round_num=1, masks=masks)
        >>> received = decode_model(encoded.payload, expected_shapes={"w": (8,), "b": (2,)})
        >>> received.model_hash == encoded.model_hash
        True
        >>> received.tensors["w"].round(1).tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, config: DownlinkCodecConfig) -> None:
        self.config = config
        self.pipeline = config.pipeline()

    def encode(
        self,
        model: Mapping[str, np.ndarray],
        *,
        round_num: int,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> EncodedModel:
        """Encode ``model``; tensors with an entry in ``masks`` (bool, True = kept) are
        sent as a bitmask plus the kept values, and decode to zero elsewhere."""
        if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
            raise ValueError(f"round_num must be a non-negative int; got {round_num!r}")
        masks = masks or {}
        unknown = sorted(set(masks) - set(model))
        if unknown:
            raise ValueError(f"masks for tensors not in the model: {unknown}")
        messages = []
        decoded: dict[str, np.ndarray] = {}
        for name, value in model.items():
            message = self.pipeline.encode_tensor(name, value, mask=masks.get(name))
            # Decode our own message: `decoded` is then exactly what devices rebuild.
            decoded[name] = self.pipeline.decode_tensor(message, np.shape(value))
            messages.append(message)
        digest = model_hash(decoded)
        envelope = pb.ModelPayload(
            format_version=FORMAT_VERSION,
            round=round_num,
            model_sha256=hash_to_bytes(digest),
            tensors=messages,
        )
        return EncodedModel(serialize(envelope), digest, decoded)


def decode_model(
    payload: bytes,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int = 256 * 2**20,
    base: DecodedModel | None = None,
) -> DecodedModel:
    """Validate and decode a model payload, and check its hash.

    The tensor names and shapes must be exactly ``expected_shapes``, the receiver's own
    model: they bound the payload's size, its tensor count and everything decoded
    from it. A delta payload is added to ``base``, the model the device kept, which must
    be the one the payload names. Raises only :class:`stamen.core.errors.InvalidUpdate`,
    with a one-line reason.

    Examples:
        >>> model = {"w": np.arange(4, dtype=np.float32)}
        >>> payload = DownlinkCodec(DownlinkCodecConfig(values="fp32")).encode(
        ...     model, round_num=2).payload
        >>> decoded = decode_model(payload, expected_shapes={"w": (4,)})
        >>> decoded.round_num, decoded.tensors["w"].tolist()
        (2, [0.0, 1.0, 2.0, 3.0])
        >>> decode_model(payload[:-1], expected_shapes={"w": (4,)})
        Traceback (most recent call last):
        ...
        stamen.core.errors.InvalidUpdate: ...
    """
    envelope = parse(pb.ModelPayload, payload, max_bytes, expected_shapes=expected_shapes)
    if base is not None and base.model_hash == envelope.model_sha256.hex():
        # The device already holds this model (a server that lost a round sends its delta
        # again): nothing to apply.
        return dataclasses.replace(base, round_num=envelope.round, keep=envelope.keep)
    if envelope.flat:
        tensors, steps = _decode_flat_levels(envelope, expected_shapes)
        masks: dict[str, np.ndarray] = {}
    else:
        tensors, masks = decode_tensors(envelope.tensors, expected_shapes)
        steps = {
            message.name: float(message.scale)
            for message in envelope.tensors
            if message.value_encoding == pb.VALUE_ENCODING_SIGNED_LEVELS
        }
    base_hash = envelope.base_model_sha256
    if base_hash:
        if len(base_hash) != len(envelope.model_sha256):
            raise InvalidUpdate(f"the base model hash has {len(base_hash)} bytes, expected 32")
        if base is None or base.model_hash != base_hash.hex():
            raise InvalidUpdate(
                f"the delta is to model {base_hash.hex()[:12]}..., which this device does "
                "not hold; it needs the whole model"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # inf fails the hash check
            tensors = {name: base.tensors[name] + delta for name, delta in tensors.items()}
    claimed = envelope.model_sha256.hex()
    actual = model_hash(tensors)
    if actual != claimed:
        raise InvalidUpdate(
            f"decoded model hash {actual[:12]}... does not match the payload's {claimed[:12]}..."
        )
    if envelope.keep or envelope.pruned:
        masks = _pruned_masks(list(envelope.pruned), tensors)
    if base_hash and base is not None:
        # Both grids are powers of two: the finer step divides every value of both.
        steps = {
            name: min((s for s in (step, base.steps.get(name, 0.0)) if s > 0), default=0.0)
            for name, step in steps.items()
        }
    return DecodedModel(
        envelope.round,
        claimed,
        tensors,
        masks,
        keep=envelope.keep,
        was_delta=bool(base_hash),
        steps=steps,
    )


def _decode_flat_levels(
    envelope: pb.ModelPayload, expected_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A flat payload's tensors (integer levels times each tensor's step) and the steps."""
    steps = list(envelope.steps)
    if len(steps) != len(expected_shapes):
        raise InvalidUpdate(
            f"a flat model payload needs {len(expected_shapes)} steps, one a tensor; "
            f"got {len(steps)}"
        )
    if not all(step == 0 or is_power_of_two(step) for step in steps):
        raise InvalidUpdate("every step of a flat model payload must be 0 or a power of two")
    messages = envelope.tensors
    if len(messages) == 1 and (
        messages[0].value_encoding != pb.VALUE_ENCODING_SIGNED_LEVELS or messages[0].scale != 1
    ):
        raise InvalidUpdate("a flat model payload holds signed levels at scale 1")
    levels = decode_flat(messages, expected_shapes)
    tensors: dict[str, np.ndarray] = {}
    for (name, value), step in zip(levels.items(), steps, strict=True):
        if step == 0 and np.any(value != 0):
            raise InvalidUpdate(f"tensor {name[:80]!r} has non-zero levels and no step")
        tensors[name] = (value.astype(np.float64) * step).astype(np.float32)
    return tensors, dict(zip(expected_shapes, steps, strict=True))


def model_payload_hash(payload: bytes, max_bytes: int = 256 * 2**20) -> str:
    """The hash a model payload claims, read without decoding its tensors."""
    return parse(pb.ModelPayload, payload, max_bytes).model_sha256.hex()


def _pruned_masks(names: list[str], tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The masks of the tensors a payload names as pruned: kept where the value is not zero."""
    if len(set(names)) != len(names):
        raise InvalidUpdate("a tensor is named twice among the pruned ones")
    unknown = [name for name in names if name not in tensors]
    if unknown:
        raise InvalidUpdate(f"pruned tensors not in the model: {unknown[:3]!r}")
    return {name: tensors[name] != 0 for name in names}
