"""Fuzzing the decoders: random, bit-flipped, cut and edited payloads decode or raise
InvalidUpdate, and nothing else."""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
from hostile_payloads import (
    SHAPES,
    edited_update,
    model_bytes,
    update_bytes,
    weight,
    with_indices,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.compression import (
    Lossless,
    ValueFormat,
    decode_model,
    decode_update,
)
from stamen.compression.bitpack import encode_rice
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb


def _zip_indices(envelope: pb.ModelUpdate) -> None:
    tensor = weight(envelope)
    tensor.lossless = pb.LOSSLESS_ZLIB
    tensor.indices = zlib.compress(tensor.indices)
    tensor.values = zlib.compress(tensor.values)


VALID = [
    update_bytes(),
    update_bytes(topk_ratio=0.1, values=ValueFormat.Q4, lossless=Lossless.ZLIB),
    update_bytes(topk_ratio=0.3, values=ValueFormat.Q2),
    edited_update(_zip_indices, topk_ratio=0.2, values=ValueFormat.Q4),
    edited_update(with_indices([0, 3, 60, 61, 159], pb.INDEX_ENCODING_VARINT_GAPS), topk_ratio=0.1),
]
VALID_MODEL = model_bytes()
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_rejects(payload: bytes) -> None:
    """The property: decoding either succeeds or raises InvalidUpdate."""
    for decode in (
        lambda: decode_update(payload, expected_shapes=SHAPES),
        lambda: decode_model(payload, expected_shapes=SHAPES),
    ):
        with contextlib.suppress(InvalidUpdate):
            decode()


def test_fuzz_seeds_cover_every_index_encoding() -> None:
    """The mutation fuzzers start from valid payloads that use each index encoding."""
    tensors = [tensor for payload in VALID for tensor in pb.ModelUpdate.FromString(payload).tensors]
    assert {t.index_encoding for t in tensors} == set(pb.IndexEncoding.values()) - {0}
    assert any(
        t.index_encoding == pb.INDEX_ENCODING_RICE_GAPS and t.lossless == pb.LOSSLESS_ZLIB
        for t in tensors
    )
    for payload in VALID:
        decode_update(payload, expected_shapes=SHAPES)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(payload: bytes) -> None:
    decodes_or_rejects(payload)


@FUZZ
@given(st.sampled_from([*VALID, VALID_MODEL]), st.data())
def test_fuzz_bit_flips_and_truncations(payload: bytes, data: st.DataObject) -> None:
    mutated = bytearray(payload)
    for position in data.draw(st.lists(st.integers(0, len(payload) * 8 - 1), max_size=4)):
        mutated[position // 8] ^= 1 << (position % 8)
    cut = data.draw(st.integers(0, len(mutated)))
    decodes_or_rejects(bytes(mutated[:cut]) + data.draw(st.binary(max_size=8)))


FIELD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "dtype": st.integers(-3, 8),
    "value_encoding": st.integers(-3, 8),
    "sparsity": st.integers(-3, 8),
    "index_encoding": st.integers(-3, 8),
    "lossless": st.integers(-3, 8),
    "bits": st.integers(0, 2**32 - 1),
    "index_bits": st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)),
    "num_values": st.integers(0, 2**64 - 1),
    "indices_size": st.integers(0, 2**64 - 1),
    "scale": st.floats(width=32),
    "zero_point": st.floats(width=32),
    "name": st.text(max_size=20),
    "indices": st.binary(max_size=300),
    "values": st.binary(max_size=600),
    "shape": st.lists(st.integers(0, 2**64 - 1), max_size=4),
}


@FUZZ
@given(st.sampled_from([*VALID, VALID_MODEL]), st.data(), st.booleans())
def test_fuzz_field_edits(payload: bytes, data: st.DataObject, resign: bool) -> None:
    kind = pb.ModelPayload if payload is VALID_MODEL else pb.ModelUpdate
    envelope = kind.FromString(payload)
    for _ in range(data.draw(st.integers(1, 3))):
        tensor = envelope.tensors[data.draw(st.integers(0, len(envelope.tensors) - 1))]
        field = data.draw(st.sampled_from(sorted(FIELD_VALUES)))
        value = data.draw(FIELD_VALUES[field])
        if field == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, field, value)
        if resign:
            tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    decodes_or_rejects(envelope.SerializeToString())


@FUZZ
@given(
    st.lists(st.integers(0, 40), max_size=30),
    st.integers(0, 31),
    st.data(),
    st.booleans(),
    st.sampled_from(VALID[1:4]),
)
def test_fuzz_rice_streams(
    gaps: list[int], k: int, data: st.DataObject, zipped: bool, payload: bytes
) -> None:
    """Valid, bit-flipped, cut and extended Rice streams, with consistent headers and
    checksums, reach the Rice decoder: it decodes them or raises InvalidUpdate."""
    stream = bytearray(encode_rice(np.array(gaps, dtype=np.int64), min(k, 30)))
    flips = st.lists(st.integers(0, 8 * len(stream) - 1), max_size=2) if stream else st.just([])
    for position in data.draw(flips):
        stream[position // 8] ^= 0x80 >> (position % 8)
    cut = data.draw(st.integers(0, len(stream)))
    stream = stream[:cut] + data.draw(st.binary(max_size=3)) if data.draw(st.booleans()) else stream
    count = len(gaps) + data.draw(st.integers(-1, 1)) if gaps else data.draw(st.integers(0, 1))

    envelope = pb.ModelUpdate.FromString(payload)
    tensor = weight(envelope)
    tensor.index_encoding = pb.INDEX_ENCODING_RICE_GAPS
    tensor.index_bits = k
    tensor.num_values = count
    tensor.indices_size = len(stream)
    tensor.value_encoding = pb.VALUE_ENCODING_FP32
    tensor.bits = 32
    tensor.scale = tensor.zero_point = 0.0
    values = np.ones(count, "<f4").tobytes()
    if zipped and stream:
        tensor.lossless = pb.LOSSLESS_ZLIB
        tensor.indices, tensor.values = zlib.compress(bytes(stream)), zlib.compress(values)
    else:
        tensor.lossless = pb.LOSSLESS_NONE
        tensor.indices, tensor.values = bytes(stream), values
    tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    try:
        decoded = decode_update(envelope.SerializeToString(), expected_shapes=SHAPES)
    except InvalidUpdate:
        return
    assert np.count_nonzero(decoded.tensors["fc.weight"]) == count
