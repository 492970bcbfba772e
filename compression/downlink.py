"""The downlink codec: the global model to bytes for devices, and back on the device.

Values go as fp32, fp16 or symmetric int8 (q8, so pruned zeros stay exactly 0).
Where the server pruned a tensor it sends a packed bitmask and only the kept
values. The payload names the SHA-256 of the model the receiver will rebuild,
and the receiver checks it, which catches corruption and codec bugs alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stamen.compression.codec_stages import FP16, FP32, Int8Symmetric, Stage, Zlib
from stamen.compression.codecs import CodecPipeline, Lossless, ValueFormat, coerce_choice
from stamen.compression.hashing import model_hash
from stamen.compression.wire import (
    FORMAT_VERSION,
    decode_tensors,
    hash_to_bytes,
    parse,
    serialize,
)
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

DOWNLINK_VALUE_FORMATS = (ValueFormat.FP32, ValueFormat.FP16, ValueFormat.Q8)


@dataclass(frozen=True)
class DownlinkCodecConfig:
    """How the server compresses the model it sends; q8 is symmetric per-tensor int8."""

    values: ValueFormat = ValueFormat.FP32
    lossless: Lossless = Lossless.NONE

    def __post_init__(self) -> None:
        values = coerce_choice(self.values, ValueFormat, "values", DOWNLINK_VALUE_FORMATS)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "lossless", coerce_choice(self.lossless, Lossless, "lossless"))

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
) -> DecodedModel:
    """Validate and decode a model payload, and check its hash.

    The tensor names and shapes must be exactly ``expected_shapes``, the receiver's own
    model: they bound the payload's size, its tensor count and everything decoded
    from it. Raises only :class:`stamen.core.errors.InvalidUpdate`, with a one-line reason.

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
    tensors, masks = decode_tensors(envelope.tensors, expected_shapes)
    claimed = envelope.model_sha256.hex()
    actual = model_hash(tensors)
    if actual != claimed:
        raise InvalidUpdate(
            f"decoded model hash {actual[:12]}... does not match the payload's {claimed[:12]}..."
        )
    return DecodedModel(envelope.round, claimed, tensors, masks)
