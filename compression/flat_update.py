"""A whole model as one vector: one top-k over every tensor, one header, a scale per tensor.

Tensors of very different scales share the vector, and MobileNet shows what goes wrong:
its BatchNorm running statistics move by tenths a round (each device's own data statistics
replace the global ones) while its convolutions' weights move by thousandths.

- **Which entries.** A top-k over raw magnitudes spent all 641 of MobileNet's slots on
  running statistics, so no weight was ever sent; ranked as if they were the size of the
  weights, they got a few slots, their global values lagged far behind, and the central
  model stayed at chance. So a tensor more than :data:`OUTSIZED` powers of two (32x) above
  the typical tensor (``e_i = floor(log2(rms_i))`` against the median over all entries) goes
  **dense**, in a second vector: every entry, every round, at the value code's bits (one bit
  with signs: about 130 bytes for MobileNet's statistics). The others share one top-k by raw
  magnitude: giving every tensor an equal share instead cost LeNet 0.6 points (its
  classifier's and first convolution's updates run 4x larger than the rest, and matter).
  Measured on first-round deltas: weights sit within 16x of the typical tensor in every
  model here and an MLP's classifier bias within 32x; most of MobileNet's statistics 64x to
  512x above.
- **What values.** The top-k's entries share the value code's one scale (they are the
  largest of similar tensors); each dense tensor's entries are divided by their own mean
  magnitude first, and those scales travel with the update, a float16 for each tensor sent
  whole (the top-k's need none), so that one sign code serves statistics of any size. An
  update without dense tensors carries neither scales nor a mask.

Examples:
    >>> from stamen.compression.codec_stages import Sign, TopK
    >>> pipeline = CodecPipeline([TopK(0.25), Sign()])
    >>> tensors = {"w": np.array([0.5, -1.5, 0.25, 0.0, 0.1, -0.2, 1.0, 0.3], np.float32),
    ...            "running_var": np.array([100.0, -300.0], np.float32)}
    >>> encoded = encode_tensors(pipeline, tensors, None, flat=True)
    >>> len(encoded.messages), np.unpackbits(np.frombuffer(encoded.dense, np.uint8))[:2].tolist()
    (2, [0, 1])
    >>> encoded.decoded["w"].tolist(), encoded.decoded["running_var"].tolist()
    ([0.0, -1.25, 0.0, 0.0, 0.0, 0.0, 1.25, 0.0], [200.0, -200.0])
    >>> back = decode_flat_update(encoded.messages, encoded.scales, encoded.dense,
    ...                           {"w": (8,), "running_var": (2,)})
    >>> all(np.array_equal(back[k], encoded.decoded[k]) for k in back)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stamen.compression.codec_stages import NonZero, TopK
from stamen.compression.codecs import CodecPipeline
from stamen.compression.wire import FLAT_NAME, decode_flat, flatten, unflatten
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

OUTSIZED = 5
"""A tensor whose RMS is more than 2**5 = 32 times the typical tensor's goes dense."""
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def exponent_of(tensor: np.ndarray) -> int:
    """``floor(log2(rms))`` of a tensor; 0 for an all-zero tensor."""
    rms = math.sqrt(float(np.mean(np.square(tensor, dtype=np.float64)))) if tensor.size else 0.0
    if rms == 0.0 or not math.isfinite(rms):
        return 0
    return math.floor(math.log2(rms))


@dataclass(frozen=True)
class EncodedTensors:
    """Tensors encoded one by one or as a flat update, and what a receiver decodes."""

    messages: list[pb.CompressedTensor]
    decoded: dict[str, np.ndarray]
    scales: bytes = b""
    """A flat update's float16 scales: one per tensor sent whole (every tensor's under
    ``tensor_scales``)."""
    dense: bytes = b""
    """A flat update's bitmask of the tensors sent whole (empty: none)."""


@dataclass(frozen=True)
class FlatLayout:
    """Where a flat update departs from one top-k at one scale (``[uplink]`` keys of the
    same names): ``tensor_scales`` gives each top-k'd tensor its own scale, as whole ones
    have; ``whole_vectors`` sends every 1-D tensor whole (:func:`sent_whole`)."""

    tensor_scales: bool = False
    whole_vectors: bool = False


ONE_SCALE = FlatLayout()
"""The default layout: one top-k at one scale, only outsized tensors whole."""


def sent_whole(tensors: Mapping[str, np.ndarray], *, vectors: bool) -> list[bool]:
    """Which tensors a flat update sends whole: the outsized ones, and with ``vectors``
    every 1-D tensor (biases, normalization weights and statistics) too."""
    whole = outsized(tensors)
    if not vectors:
        return whole
    return [w or np.ndim(value) <= 1 for w, value in zip(whole, tensors.values(), strict=True)]


def outsized(tensors: Mapping[str, np.ndarray]) -> list[bool]:
    """Which tensors are more than :data:`OUTSIZED` powers of two above the typical one
    (the median ``floor(log2(rms))`` over all entries)."""
    own = [exponent_of(np.asarray(value, np.float32)) for value in tensors.values()]
    if not own:
        return []
    sizes = np.asarray([int(np.size(value)) for value in tensors.values()])
    order = np.argsort(own, kind="stable")
    cumulative = np.cumsum(sizes[order])
    median = own[int(order[np.searchsorted(cumulative, cumulative[-1] / 2)])]
    return [exponent - median > OUTSIZED for exponent in own]


def encode_tensors(
    pipeline: CodecPipeline,
    tensors: Mapping[str, np.ndarray],
    rng: np.random.Generator | None,
    *,
    flat: bool,
    layout: FlatLayout = ONE_SCALE,
) -> EncodedTensors:
    """Encode ``tensors`` one by one, or as a flat update (``flat``, laid out as ``layout``
    says), and compute exactly what a receiver decodes from the messages (per tensor)."""
    messages: list[pb.CompressedTensor] = []
    decoded: dict[str, np.ndarray] = {}
    if not flat:
        for name, value in tensors.items():
            message, decoded[name] = pipeline.encode_and_reconstruct(name, value, rng)
            messages.append(message)
        return EncodedTensors(messages, decoded)
    whole = sent_whole(tensors, vectors=layout.whole_vectors)
    lossless = [pipeline.zlib] if pipeline.zlib else []
    groups = [
        ({n: v for (n, v), w in zip(tensors.items(), whole, strict=True) if not w}, False),
        ({n: v for (n, v), w in zip(tensors.items(), whole, strict=True) if w}, True),
    ]
    scales: dict[str, np.float16] = {}
    for part, dense in groups:
        if dense and not part:
            continue
        shapes = {name: np.shape(value) for name, value in part.items()}
        vector = flatten(part)[FLAT_NAME] if part else np.zeros(0, np.float32)
        kept = np.arange(vector.size) if dense else _kept(pipeline.sparsifier, vector)
        # The top-k's tensors share the value code's one scale (unless ``tensor_scales``);
        # each whole one has its own.
        part_scales = (
            _kept_scales(vector, kept, shapes)
            if dense or layout.tensor_scales
            else np.ones(len(part), np.float16)
        )
        per_entry = np.repeat(
            part_scales.astype(np.float64), [math.prod(s) for s in shapes.values()]
        )
        scaled = np.zeros(vector.size, dtype=np.float32)
        scaled[kept] = (vector[kept] / per_entry[kept]).astype(np.float32)
        # The positions are chosen: the pipeline keeps exactly them (all, when dense).
        stages = [pipeline.values, *lossless] if dense else [NonZero(), pipeline.values, *lossless]
        message, received = CodecPipeline(stages).encode_and_reconstruct(FLAT_NAME, scaled, rng)
        messages.append(message)
        segments = unflatten({FLAT_NAME: received}, shapes) if part else {}
        decoded.update(_scaled_back(segments, part_scales))
        scales.update(zip(part, part_scales, strict=True))
    order = list(tensors)
    # The top-k's tensors share one scale, the value code's: only the others' travel.
    scaled_names = [n for n, w in zip(order, whole, strict=True) if w or layout.tensor_scales]
    return EncodedTensors(
        messages,
        {name: decoded[name] for name in order},
        np.asarray([scales[name] for name in scaled_names], np.float16).astype("<f2").tobytes(),
        np.packbits(whole).tobytes() if any(whole) else b"",
    )


def decode_flat_update(
    messages: Sequence[pb.CompressedTensor],
    scales: bytes,
    dense: bytes,
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """A flat update's tensors: its vectors cut into ``expected_shapes``, each segment
    multiplied by its scale."""
    count = len(expected_shapes)
    whole = [False] * count
    if dense:
        bits = np.unpackbits(np.frombuffer(dense, np.uint8))
        if len(dense) != (count + 7) // 8 or bits[count:].any():
            raise InvalidUpdate(f"a flat update's dense mask must hold {count} bits, one a tensor")
        whole = bits[:count].astype(bool).tolist()
    groups = [
        {n: s for (n, s), w in zip(expected_shapes.items(), whole, strict=True) if not w},
        {n: s for (n, s), w in zip(expected_shapes.items(), whole, strict=True) if w},
    ]
    expected_messages = 1 + any(whole)
    if len(messages) != expected_messages:
        raise InvalidUpdate(
            f"a flat update must hold {expected_messages} unnamed tensors; got {len(messages)}"
        )
    segments: dict[str, np.ndarray] = {}
    for message, group in zip(messages, groups, strict=False):
        segments.update(decode_flat([message], group))
    segments = {name: segments[name] for name in expected_shapes}
    if not scales:
        return segments
    # A scale for every tensor, or (the top-k's tensors sharing one) for each sent whole.
    if len(scales) not in (2 * count, 2 * sum(whole)):
        raise InvalidUpdate(
            f"a flat update needs {count} scales, one a tensor, or {sum(whole)}, one a tensor "
            f"sent whole; got {len(scales) / 2:g}"
        )
    values = np.frombuffer(scales, "<f2").astype(np.float32)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise InvalidUpdate("a flat update's scales must be finite and not negative")
    if values.size < count:
        every = np.ones(count, np.float32)
        every[np.asarray(whole, bool)] = values
        values = every
    with np.errstate(over="ignore", invalid="ignore"):
        tensors = _scaled_back(segments, values)
    if not all(np.isfinite(value).all() for value in tensors.values()):
        raise InvalidUpdate("decoded values are not all finite once scaled")
    return tensors


def _kept(sparsifier: object, vector: np.ndarray) -> np.ndarray:
    """Sorted positions the sparsifier keeps (all without one)."""
    if isinstance(sparsifier, TopK):
        return sparsifier.select(vector)
    if isinstance(sparsifier, NonZero):
        return sparsifier.select(vector)
    return np.arange(vector.size)


def _kept_scales(
    vector: np.ndarray, kept: np.ndarray, shapes: Mapping[str, tuple[int, ...]]
) -> np.ndarray:
    """Each tensor's mean kept magnitude, as float16 (what travels), 0 where none is kept."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    owner = np.repeat(np.arange(len(sizes)), sizes)[kept]
    total = np.bincount(
        owner, weights=np.abs(vector[kept].astype(np.float64)), minlength=len(sizes)
    )
    count = np.bincount(owner, minlength=len(sizes))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    # Within float16's range, and never 0 where something is kept (its values go as is).
    mean = np.clip(mean, 0.0, _FLOAT16_MAX)
    scales = mean.astype(np.float16)
    scales[(count > 0) & (scales == 0)] = np.float16(1.0)
    return scales


def _scaled_back(tensors: Mapping[str, np.ndarray], scales: np.ndarray) -> dict[str, np.ndarray]:
    return {
        name: (np.asarray(value, np.float64) * float(scale)).astype(np.float32)
        for (name, value), scale in zip(tensors.items(), scales, strict=True)
    }
