"""Decoding bytes from an untrusted peer raises InvalidUpdate with a clear reason, nothing else.

Each named attack gets its own test with the message a user would read; the
fuzz tests then throw random and mutated payloads at the decoders and check that
the only exception is InvalidUpdate.
"""

from __future__ import annotations

import contextlib
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.compression import (
    DownlinkCodec,
    DownlinkCodecConfig,
    Lossless,
    UplinkCodec,
    UplinkCodecConfig,
    ValueFormat,
    bitpack,
    decode_model,
    decode_update,
)
from stamen.compression.bitpack import encode_rice, encode_varints, pack_bits
from stamen.compression.tensor_decode import decode_tensor
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

HASH = "cd" * 32
SHAPES = {"fc.weight": (16, 10), "fc.bias": (10,)}


def _delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def update_bytes(**config: object) -> bytes:
    codec = UplinkCodec(UplinkCodecConfig(**config))
    return codec.encode(
        _delta(), round_num=3, base_model_hash=HASH, residual=None, rng=np.random.default_rng(0)
    ).payload


def model_bytes(values: ValueFormat = ValueFormat.Q8) -> bytes:
    mask = np.arange(160).reshape(16, 10) % 3 == 0
    return (
        DownlinkCodec(DownlinkCodecConfig(values=values))
        .encode(_delta(), round_num=3, masks={"fc.weight": mask})
        .payload
    )


def edited_update(
    edit: Callable[[pb.ModelUpdate], None], *, resign: bool = True, **config: object
) -> bytes:
    """A valid update with ``edit`` applied; ``resign`` recomputes the checksums so the
    edit reaches the checks behind the CRC."""
    envelope = pb.ModelUpdate.FromString(update_bytes(**config))
    edit(envelope)
    if resign:
        for tensor in envelope.tensors:
            tensor.crc32 = zlib.crc32(tensor.values, zlib.crc32(tensor.indices))
    return envelope.SerializeToString()


def rejects(payload: bytes, match: str, **kwargs: object) -> None:
    with pytest.raises(InvalidUpdate, match=match) as error:
        decode_update(payload, expected_shapes=SHAPES, **kwargs)
    assert "\n" not in str(error.value)


def weight(envelope: pb.ModelUpdate) -> pb.CompressedTensor:
    return next(t for t in envelope.tensors if t.name == "fc.weight")


# -- envelope -------------------------------------------------------------------------------


def test_valid_payloads_decode() -> None:
    assert decode_update(update_bytes(), expected_shapes=SHAPES).round_num == 3
    assert decode_model(model_bytes(), expected_shapes=SHAPES).round_num == 3


def test_garbage_does_not_parse() -> None:
    rejects(b"\xff\xff\xff\xff garbage", "does not parse as ModelUpdate")


def test_size_limit_is_checked_before_parsing() -> None:
    rejects(b"\x00" * 1001, "1001 bytes exceeds the limit of 1000", max_bytes=1000)


def test_unknown_format_version() -> None:
    rejects(edited_update(lambda e: setattr(e, "format_version", 2)), "format version 2")


def test_hash_of_wrong_length() -> None:
    rejects(edited_update(lambda e: setattr(e, "base_model_sha256", b"short")), "hash has 5 bytes")


def test_model_hash_mismatch_is_caught() -> None:
    envelope = pb.ModelPayload.FromString(model_bytes())
    envelope.model_sha256 = bytes(32)
    with pytest.raises(InvalidUpdate, match="does not match the payload's"):
        decode_model(envelope.SerializeToString())


def test_update_and_model_payloads_cannot_be_confused() -> None:
    rejects(model_bytes(), "update has format version 0")
    with pytest.raises(InvalidUpdate, match="model payload has format version 0"):
        decode_model(update_bytes())


def test_tensor_names_must_match_the_model() -> None:
    rejects(edited_update(lambda e: e.tensors.pop()), "missing 'fc.bias'")
    rejects(
        edited_update(lambda e: setattr(weight(e), "name", "evil")),
        "missing 'fc.weight'; unexpected 'evil'",
    )
    rejects(edited_update(lambda e: e.tensors.append(e.tensors[0])), "duplicate tensor names")


# -- tensor header ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["value_encoding", "sparsity", "index_encoding", "lossless", "dtype"]
)
@pytest.mark.parametrize("value", [0, 77])
def test_unspecified_or_unknown_enums(field: str, value: int) -> None:
    rejects(
        edited_update(lambda e: setattr(weight(e), field, value)),
        f"tensor 'fc.weight': unknown or unspecified {field} {value}",
    )


def test_shape_must_match_exactly() -> None:
    def reshape(envelope: pb.ModelUpdate) -> None:
        del weight(envelope).shape[:]
        weight(envelope).shape.extend([10, 16])

    rejects(edited_update(reshape), r"shape \(10, 16\), expected \(16, 10\)")


def test_huge_shape_is_refused_without_allocating() -> None:
    envelope = pb.ModelPayload.FromString(model_bytes(ValueFormat.FP32))
    del envelope.tensors[1].shape[:]
    envelope.tensors[1].shape.extend([2**40, 2**40])
    tracemalloc.start()
    try:
        with pytest.raises(InvalidUpdate, match="exceeds 268435456 elements"):
            decode_model(envelope.SerializeToString())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.parametrize("bits", [0, 3, 16])
def test_uniform_bits_must_be_2_4_or_8(bits: int) -> None:
    rejects(
        edited_update(lambda e: setattr(weight(e), "bits", bits), values=ValueFormat.Q4),
        f"bits must be one of 2, 4, 8 for VALUE_ENCODING_UNIFORM; got {bits}",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("scale", float("nan")), ("scale", float("inf")), ("zero_point", float("-inf"))],
)
def test_non_finite_scale_or_zero_point(field: str, value: float) -> None:
    rejects(
        edited_update(lambda e: setattr(weight(e), field, value), values=ValueFormat.Q4),
        "scale and zero point must be finite",
    )


def test_values_that_overflow_float32_are_rejected() -> None:
    rejects(
        edited_update(lambda e: setattr(weight(e), "scale", 3e38), values=ValueFormat.Q4),
        "decoded values are not all finite",
    )


def test_nan_in_float_values_is_rejected() -> None:
    def poison(envelope: pb.ModelUpdate) -> None:
        values = bytearray(weight(envelope).values)
        values[:4] = np.array([np.nan], "<f4").tobytes()
        weight(envelope).values = bytes(values)

    rejects(edited_update(poison), "decoded values are not all finite")


# -- packed bytes ------------------------------------------------------------------------------


def test_checksum_mismatch() -> None:
    def flip(envelope: pb.ModelUpdate) -> None:
        values = bytearray(weight(envelope).values)
        values[5] ^= 0x10
        weight(envelope).values = bytes(values)

    rejects(edited_update(flip, resign=False), "tensor 'fc.weight': checksum mismatch")


def test_wrong_packed_length_names_the_sizes() -> None:
    rejects(
        edited_update(
            lambda e: setattr(weight(e), "values", weight(e).values[:-1]), values=ValueFormat.Q4
        ),
        "tensor 'fc.weight': 79 value bytes for 160 values at 4 bits, expected 80",
    )


def test_zlib_bomb_is_cut_off_at_the_expected_size() -> None:
    bomb = zlib.compress(bytes(64 * 2**20))  # 64 MiB of zeros in ~64 KiB

    def arm(envelope: pb.ModelUpdate) -> None:
        weight(envelope).lossless = pb.LOSSLESS_ZLIB
        weight(envelope).values = bomb

    tracemalloc.start()
    try:
        rejects(edited_update(arm), "does not inflate to exactly 640 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_zlib_stream_too_short_or_corrupt() -> None:
    def short(envelope: pb.ModelUpdate) -> None:
        weight(envelope).lossless = pb.LOSSLESS_ZLIB
        weight(envelope).values = zlib.compress(weight(envelope).values[:-4])

    rejects(edited_update(short), "does not inflate to exactly 640 bytes")

    def corrupt(envelope: pb.ModelUpdate) -> None:
        weight(envelope).lossless = pb.LOSSLESS_ZLIB
        weight(envelope).values = b"\x78\x9c" + b"\xff" * 20

    rejects(edited_update(corrupt), "corrupt zlib stream")


def _with_indices(
    positions: list[int], encoding: int, rice_k: int = 2
) -> Callable[[pb.ModelUpdate], None]:
    def edit(envelope: pb.ModelUpdate) -> None:
        gaps = np.diff(positions, prepend=-1) - 1
        if encoding == pb.INDEX_ENCODING_BITPACKED:
            indices, index_bits = pack_bits(np.array(positions), 8), 8
        elif encoding == pb.INDEX_ENCODING_RICE_GAPS:
            indices, index_bits = encode_rice(gaps, rice_k), rice_k
        else:
            indices, index_bits = encode_varints(gaps), 0
        _with_index_bytes(indices, len(positions), encoding, index_bits)(envelope)

    return edit


def _with_index_bytes(
    indices: bytes, count: int, encoding: int, index_bits: int
) -> Callable[[pb.ModelUpdate], None]:
    """Replace fc.weight's index list (of an update sent with top-k) with raw bytes."""

    def edit(envelope: pb.ModelUpdate) -> None:
        tensor = weight(envelope)
        tensor.index_encoding = encoding
        tensor.index_bits = index_bits
        tensor.indices = indices
        tensor.indices_size = len(indices)
        tensor.num_values = count
        tensor.values = np.ones(count, "<f4").tobytes()

    return edit


def _rice_stream(stream: bytes, count: int, k: int) -> bytes:
    return edited_update(
        _with_index_bytes(stream, count, pb.INDEX_ENCODING_RICE_GAPS, k), topk_ratio=0.1
    )


def test_bitpacked_indices_must_increase_and_be_in_range() -> None:
    rejects(
        edited_update(_with_indices([5, 3, 9], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "indices are not strictly increasing",
    )
    rejects(
        edited_update(_with_indices([5, 5, 9], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "indices are not strictly increasing",
    )
    rejects(
        edited_update(_with_indices([5, 9, 200], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "index 200 out of range for 160 elements",
    )


def test_varint_indices_must_be_in_range() -> None:
    rejects(
        edited_update(_with_indices([1, 2, 500], pb.INDEX_ENCODING_VARINT_GAPS), topk_ratio=0.1),
        "index 500 out of range for 160 elements",
    )


def test_rice_indices_must_be_in_range() -> None:
    # Gaps 1, 0, 497 with k = 8: 28 bits, within the 4 bytes three codes may take.
    rejects(
        edited_update(
            _with_indices([1, 2, 500], pb.INDEX_ENCODING_RICE_GAPS, rice_k=8), topk_ratio=0.1
        ),
        "index 500 out of range for 160 elements",
    )


def test_valid_rice_indices_decode() -> None:
    update = edited_update(_with_indices([5, 9, 100], pb.INDEX_ENCODING_RICE_GAPS), topk_ratio=0.1)
    decoded = decode_update(update, expected_shapes=SHAPES).tensors["fc.weight"]
    assert np.flatnonzero(decoded).tolist() == [5, 9, 100]


@pytest.mark.parametrize("k", [31, 2**32 - 1])
def test_rice_parameter_out_of_range(k: int) -> None:
    rejects(
        _rice_stream(bytes(4), 3, k),
        f"tensor 'fc.weight': Rice parameter \\(index_bits\\) must be in 0..30; got {k}",
    )


@pytest.mark.parametrize("length", [1, 7, 2**40])
def test_rice_stream_length_must_fit_the_codes_and_the_tensor(length: int) -> None:
    """3 codes with k = 2 take 9 bits or more; gaps into 160 elements, 48 bits at most."""

    def claim(envelope: pb.ModelUpdate) -> None:
        _with_index_bytes(bytes(min(length, 8)), 3, pb.INDEX_ENCODING_RICE_GAPS, 2)(envelope)
        weight(envelope).indices_size = length
        weight(envelope).lossless = pb.LOSSLESS_ZLIB  # a claimed size is checked before inflating

    rejects(
        edited_update(claim, topk_ratio=0.1),
        f"{length} Rice bytes for 3 indices with k=2, expected 2..6",
    )


# Gaps 5, 3, 90 with k = 2: 10|01 0|11 1111111111111111111111|0|10 = 32 bits.
RICE_5_9_100 = encode_rice(np.array([5, 3, 90]), 2)


@pytest.mark.parametrize(
    ("stream", "count", "k", "reason"),
    [
        (RICE_5_9_100[:-1], 3, 2, "Rice stream ends after 2 of 3 codes"),  # truncated
        (b"\xff\xff", 3, 0, "Rice stream ends after 0 of 3 codes"),  # unary run past the end
        (bytes([0b0000_1110]), 2, 3, "ends inside the remainder of code 2"),
        (RICE_5_9_100 + b"\x00", 3, 2, "1 trailing byte\\(s\\) after the Rice codes"),
        (RICE_5_9_100 + b"\x80", 3, 2, "1 trailing byte\\(s\\) after the Rice codes"),
        # Gaps 5, 3 take 7 bits; the eighth is padding and must be zero.
        (bytes([0b1001_0111]), 2, 2, "non-zero padding bits after the Rice codes"),
    ],
)
@pytest.mark.parametrize("short_stream_bytes", [256, 0], ids=["code-by-code", "windowed"])
def test_malformed_rice_streams(
    stream: bytes,
    count: int,
    k: int,
    reason: str,
    short_stream_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both decoders (short streams code by code, long ones by windows) give the same reason.
    monkeypatch.setattr(bitpack, "_SMALL_RICE_BYTES", short_stream_bytes)
    assert len(RICE_5_9_100) == 4
    rejects(_rice_stream(stream, count, k), f"tensor 'fc.weight': .*{reason}")


def test_rice_stream_as_long_as_the_layout_allows_stays_cheap() -> None:
    """The longest valid stream (all gaps 0 at k = 30) zips to almost nothing; decoding it
    costs memory per index, not per bit: a per-bit work array would need about 1 GiB here."""
    size = 2**18
    stream = bytes(size * 31 // 8)
    message = pb.CompressedTensor(
        name="w",
        shape=[size],
        dtype=pb.DTYPE_FLOAT32,
        value_encoding=pb.VALUE_ENCODING_UNIFORM,
        bits=2,
        sparsity=pb.SPARSITY_ENCODING_INDICES,
        index_encoding=pb.INDEX_ENCODING_RICE_GAPS,
        index_bits=30,
        num_values=size,
        indices_size=len(stream),
        indices=zlib.compress(stream),
        values=zlib.compress(bytes(size // 4)),
        lossless=pb.LOSSLESS_ZLIB,
    )
    message.crc32 = zlib.crc32(message.values, zlib.crc32(message.indices))
    assert len(message.SerializeToString()) < 2**12
    tracemalloc.start()
    try:
        decoded = decode_tensor(message, expected_shape=(size,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.shape == (size,)
    assert peak < 40 * 2**20


def test_bitmask_must_agree_with_value_count() -> None:
    envelope = pb.ModelPayload.FromString(model_bytes())
    masked = next(t for t in envelope.tensors if t.sparsity == pb.SPARSITY_ENCODING_BITMASK)
    masked.indices = b"\xff" + masked.indices[1:]
    masked.crc32 = zlib.crc32(masked.values, zlib.crc32(masked.indices))
    with pytest.raises(InvalidUpdate, match="values were sent"):
        decode_model(envelope.SerializeToString())


# -- fuzzing ---------------------------------------------------------------------------------


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
    edited_update(
        _with_indices([0, 3, 60, 61, 159], pb.INDEX_ENCODING_VARINT_GAPS), topk_ratio=0.1
    ),
]
VALID_MODEL = model_bytes()
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_rejects(payload: bytes) -> None:
    """The property: decoding either succeeds or raises InvalidUpdate."""
    for decode in (
        lambda: decode_update(payload, expected_shapes=SHAPES),
        lambda: decode_model(payload),
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
