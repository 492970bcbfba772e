"""Decoding bytes from an untrusted peer raises InvalidUpdate with a clear reason, nothing else.

Each named attack on the envelope, a tensor's header or its packed bytes gets its own test
with the message a user would read. Attacks on index lists and masks are in
``test_compression_index_hostile``; random and mutated payloads in ``test_compression_wire_fuzz``.
"""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
from hostile_payloads import (
    SHAPES,
    edited_update,
    model_bytes,
    rejects,
    update_bytes,
    weight,
)

from stamen.compression import (
    ValueFormat,
    decode_model,
    decode_update,
)
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

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
        decode_model(envelope.SerializeToString(), expected_shapes=SHAPES)


def test_update_and_model_payloads_cannot_be_confused() -> None:
    rejects(model_bytes(), "update has format version 0")
    with pytest.raises(InvalidUpdate, match="model payload has format version 0"):
        decode_model(update_bytes(), expected_shapes=SHAPES)


def test_tensor_names_must_match_the_model() -> None:
    rejects(edited_update(lambda e: e.tensors.pop()), "missing 'fc.bias'")
    rejects(
        edited_update(lambda e: setattr(weight(e), "name", "evil")),
        "missing 'fc.weight'; unexpected 'evil'",
    )
    rejects(
        edited_update(lambda e: e.tensors.append(e.tensors[0])),
        "update has more than 2 tensors; the model has 2",
    )

    def duplicate(envelope: pb.ModelUpdate) -> None:
        envelope.tensors[1].CopyFrom(envelope.tensors[0])

    rejects(edited_update(duplicate), "duplicate tensor names: 'fc.weight'")


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

    rejects(edited_update(reshape), r"expected shape \(16, 10\), got \(10, 16\)")


def test_huge_shape_is_refused_without_allocating() -> None:
    envelope = pb.ModelPayload.FromString(model_bytes(ValueFormat.FP32))
    del envelope.tensors[1].shape[:]
    envelope.tensors[1].shape.extend([2**40, 2**40])
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidUpdate, match=r"expected shape \(10,\), got \(1099511627776, 1099511627776\)"
        ):
            decode_model(envelope.SerializeToString(), expected_shapes=SHAPES)
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
    bomb = zlib.compress(bytes(4 * 2**20))  # 4 MiB of zeros in ~4 KiB, within the size bound

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
