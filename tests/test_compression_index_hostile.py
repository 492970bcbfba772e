"""Hostile index lists and masks: each named attack is rejected with the reason a user reads.

Top-k updates carry their positions bit-packed, as varint gaps or as Rice-coded gaps, and
models carry pruning bitmasks; every malformed list is an InvalidUpdate, never a crash or a
large allocation.
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
    weight,
    with_index_bytes,
    with_indices,
)

from stamen.compression import (
    bitpack,
    decode_model,
    decode_update,
)
from stamen.compression.bitpack import encode_rice
from stamen.compression.tensor_decode import decode_tensor
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb


def _rice_stream(stream: bytes, count: int, k: int) -> bytes:
    return edited_update(
        with_index_bytes(stream, count, pb.INDEX_ENCODING_RICE_GAPS, k), topk_ratio=0.1
    )


def test_bitpacked_indices_must_increase_and_be_in_range() -> None:
    rejects(
        edited_update(with_indices([5, 3, 9], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "indices are not strictly increasing",
    )
    rejects(
        edited_update(with_indices([5, 5, 9], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "indices are not strictly increasing",
    )
    rejects(
        edited_update(with_indices([5, 9, 200], pb.INDEX_ENCODING_BITPACKED), topk_ratio=0.1),
        "index 200 out of range for 160 elements",
    )


def test_varint_indices_must_be_in_range() -> None:
    rejects(
        edited_update(with_indices([1, 2, 500], pb.INDEX_ENCODING_VARINT_GAPS), topk_ratio=0.1),
        "index 500 out of range for 160 elements",
    )


def test_rice_indices_must_be_in_range() -> None:
    # Gaps 1, 0, 497 with k = 8: 28 bits, within the 4 bytes three codes may take.
    rejects(
        edited_update(
            with_indices([1, 2, 500], pb.INDEX_ENCODING_RICE_GAPS, rice_k=8), topk_ratio=0.1
        ),
        "index 500 out of range for 160 elements",
    )


def test_valid_rice_indices_decode() -> None:
    update = edited_update(with_indices([5, 9, 100], pb.INDEX_ENCODING_RICE_GAPS), topk_ratio=0.1)
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
        with_index_bytes(bytes(min(length, 8)), 3, pb.INDEX_ENCODING_RICE_GAPS, 2)(envelope)
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
        decode_model(envelope.SerializeToString(), expected_shapes=SHAPES)
