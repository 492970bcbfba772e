"""A whole model as one vector: one top-k and one value scale over every tensor.

Tensors differ in scale by orders of magnitude: a BatchNorm's running variance moves by
tenths while a convolution's weights move by thousandths, and a top-k over raw magnitudes
would spend every slot on the running statistics (MobileNet: all 641 of them, measured).
So an outsized tensor is first brought down to the typical tensor's scale: with
``e_i = floor(log2(rms_i))`` and ``e_ref`` the typical tensor's (the median over all
entries), a tensor more than :data:`OUTSIZED` powers of two (16x) above it is divided by
``2**(e_i - e_ref)``. Every other tensor keeps its raw magnitudes, so the top-k still picks
the largest entries among them: giving every tensor an equal share instead cost LeNet 0.6
points (its classifier's and first convolution's updates run 4x larger than the rest, and
matter). Measured on MobileNet's deltas, weights sit within 16x of each other and the
running statistics 64x to 512x above. The exponents travel with the update, a byte a tensor,
and the receiver multiplies each segment back, exactly.

Examples:
    >>> from stamen.compression.codec_stages import Sign, TopK
    >>> pipeline = CodecPipeline([TopK(0.25), Sign()])
    >>> tensors = {"big": np.array([100.0, -300.0, 50.0, 0.0], np.float32),
    ...            "small": np.array([0.01, 0.0, -0.03, 0.0, 0.02, 0.0], np.float32)}
    >>> messages, decoded, exponents = encode_tensors(pipeline, tensors, None, flat=True)
    >>> len(messages), np.frombuffer(exponents, np.int8).tolist()
    (1, [14, 0])
    >>> [int(np.count_nonzero(v)) for v in decoded.values()]  # not all three from "big"
    [1, 2]
    >>> back = decode_flat_update(messages, exponents, {"big": (4,), "small": (6,)})
    >>> all(np.array_equal(back[k], decoded[k]) for k in back)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from stamen.compression.codecs import CodecPipeline
from stamen.compression.wire import FLAT_NAME, decode_flat, flatten, unflatten
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

_EXPONENT_RANGE = (-126, 127)
OUTSIZED = 4
"""A tensor whose RMS is more than 2**4 = 16 times the typical tensor's is scaled down."""


def exponent_of(tensor: np.ndarray) -> int:
    """``floor(log2(rms))`` of a tensor, within a signed byte; 0 for an all-zero tensor."""
    rms = math.sqrt(float(np.mean(np.square(tensor, dtype=np.float64)))) if tensor.size else 0.0
    if rms == 0.0 or not math.isfinite(rms):
        return 0
    return min(max(math.floor(math.log2(rms)), _EXPONENT_RANGE[0]), _EXPONENT_RANGE[1])


def excess_exponents(tensors: Mapping[str, np.ndarray]) -> list[int]:
    """By how many powers of two each tensor is scaled down: ``e_i - e_ref`` where that is
    more than :data:`OUTSIZED`, else 0 (``e_ref`` the median ``e_i`` over all entries)."""
    own = [exponent_of(np.asarray(value, np.float32)) for value in tensors.values()]
    sizes = [int(np.size(value)) for value in tensors.values()]
    if not own:
        return []
    order = np.argsort(own, kind="stable")
    cumulative = np.cumsum(np.asarray(sizes)[order])
    median = own[int(order[np.searchsorted(cumulative, cumulative[-1] / 2)])]
    return [e - median if e - median > OUTSIZED else 0 for e in own]


def encode_tensors(
    pipeline: CodecPipeline,
    tensors: Mapping[str, np.ndarray],
    rng: np.random.Generator | None,
    *,
    flat: bool,
) -> tuple[list[pb.CompressedTensor], dict[str, np.ndarray], bytes]:
    """Encode ``tensors`` one by one, or as one normalised vector (``flat``).

    Returns the messages, exactly what a receiver decodes from them (per tensor), and the
    exponents a flat update carries (``b""`` otherwise).
    """
    if not flat:
        messages, decoded = [], {}
        for name, value in tensors.items():
            message, decoded[name] = pipeline.encode_and_reconstruct(name, value, rng)
            messages.append(message)
        return messages, decoded, b""
    shapes = {name: np.shape(value) for name, value in tensors.items()}
    exponents = excess_exponents(tensors)
    scaled = {
        name: np.asarray(value, np.float64) / 2.0**exponent
        for (name, value), exponent in zip(tensors.items(), exponents, strict=True)
    }
    message, vector = pipeline.encode_and_reconstruct(FLAT_NAME, flatten(scaled)[FLAT_NAME], rng)
    decoded = _scaled_back(unflatten({FLAT_NAME: vector}, shapes), exponents)
    return [message], decoded, np.asarray(exponents, np.int8).tobytes()


def decode_flat_update(
    messages: Sequence[pb.CompressedTensor],
    exponents: bytes,
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """A flat update's tensors: its one vector cut into ``expected_shapes`` and scaled back."""
    segments = decode_flat(messages, expected_shapes)
    if not exponents:
        return segments
    if len(exponents) != len(expected_shapes):
        raise InvalidUpdate(
            f"a flat update needs {len(expected_shapes)} exponents, one a tensor; "
            f"got {len(exponents)}"
        )
    with np.errstate(over="ignore"):
        tensors = _scaled_back(segments, np.frombuffer(exponents, np.int8).tolist())
    if not all(np.isfinite(value).all() for value in tensors.values()):
        raise InvalidUpdate("decoded values are not all finite once scaled by their exponents")
    return tensors


def _scaled_back(tensors: Mapping[str, np.ndarray], exponents: list[int]) -> dict[str, np.ndarray]:
    return {
        name: (np.asarray(value, np.float64) * 2.0**exponent).astype(np.float32)
        for (name, value), exponent in zip(tensors.items(), exponents, strict=True)
    }
