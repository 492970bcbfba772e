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
    decode_model,
    decode_update,
)
from stamen.compression.bitpack import encode_varints, pack_bits
from stamen.errors import InvalidUpdate
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


def _with_indices(positions: list[int], encoding: int) -> Callable[[pb.ModelUpdate], None]:
    def edit(envelope: pb.ModelUpdate) -> None:
        tensor = weight(envelope)
        tensor.index_encoding = encoding
        if encoding == pb.INDEX_ENCODING_BITPACKED:
            tensor.index_bits = 8
            tensor.indices = pack_bits(np.array(positions), 8)
        else:
            tensor.index_bits = 0
            tensor.indices = encode_varints(np.diff(positions, prepend=-1) - 1)
        tensor.indices_size = len(tensor.indices)
        tensor.num_values = len(positions)
        tensor.values = np.ones(len(positions), "<f4").tobytes()

    return edit


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


def test_bitmask_must_agree_with_value_count() -> None:
    envelope = pb.ModelPayload.FromString(model_bytes())
    masked = next(t for t in envelope.tensors if t.sparsity == pb.SPARSITY_ENCODING_BITMASK)
    masked.indices = b"\xff" + masked.indices[1:]
    masked.crc32 = zlib.crc32(masked.values, zlib.crc32(masked.indices))
    with pytest.raises(InvalidUpdate, match="values were sent"):
        decode_model(envelope.SerializeToString())


# -- fuzzing ---------------------------------------------------------------------------------

VALID = [
    update_bytes(),
    update_bytes(topk_ratio=0.1, values=ValueFormat.Q4, lossless=Lossless.ZLIB),
    update_bytes(topk_ratio=0.3, values=ValueFormat.Q2),
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
    "index_bits": st.integers(0, 2**32 - 1),
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
