"""Top-k positions: which entries are kept, and the smallest of the three index encodings.

A top-k update sends its kept positions bit-packed, as varint gaps or as Rice-coded gaps,
whichever is smallest; every encoding round-trips every position exactly.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from codec_samples import normal, roundtrip
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.compression import (
    bitpack,
)
from stamen.compression.bitpack import (
    best_rice_parameter,
    decode_rice,
    encode_rice,
    rice_bit_count,
)
from stamen.compression.codec_stages import TopK, Zlib
from stamen.compression.codecs import CodecPipeline
from stamen.core.errors import InvalidUpdate
from stamen.protos.update.v1 import update_pb2 as pb

# -- top-k and indices ----------------------------------------------------------------


def test_topk_keeps_exactly_the_largest_magnitudes() -> None:
    x = normal(1_000)
    decoded = roundtrip(CodecPipeline([TopK(0.05)]), x)
    kept = np.flatnonzero(decoded)
    assert set(kept) == set(np.argsort(-np.abs(x))[:50])
    np.testing.assert_array_equal(decoded[kept], x[kept])  # fp32 values are exact


def test_topk_keeps_at_least_one_entry() -> None:
    decoded = roundtrip(CodecPipeline([TopK(1e-6)]), np.array([0.5, -3.0, 1.0], np.float32))
    assert decoded.tolist() == [0.0, -3.0, 0.0]


def _spiky(positions: np.ndarray, size: int) -> tuple[np.ndarray, TopK]:
    """A tensor whose top-k are exactly ``positions``, and that TopK."""
    x = np.zeros(size, dtype=np.float32)
    x[positions] = 1.0 + np.arange(len(positions), dtype=np.float32)
    return x, TopK(len(positions) / size)


def _index_sizes(positions: np.ndarray, size: int) -> dict[int, int]:
    """Bytes each index encoding takes, computed from the wire format's definitions."""
    gaps = [int(g) for g in np.diff(positions, prepend=-1) - 1]
    width = max(1, (size - 1).bit_length())
    rice_bits = min(len(gaps) * (k + 1) + sum(g >> k for g in gaps) for k in range(31))
    return {
        pb.INDEX_ENCODING_BITPACKED: (len(gaps) * width + 7) // 8,
        pb.INDEX_ENCODING_VARINT_GAPS: sum(1 + (g >= 128) + (g >= 2**14) for g in gaps),
        pb.INDEX_ENCODING_RICE_GAPS: (rice_bits + 7) // 8,
    }


INDEX_CASES = {
    # Two far-apart indices: 8-bit positions beat a 2-byte varint and a long unary run.
    "bitpacked": (np.array([200, 255]), 256),
    # Gaps alternating 0 and 2**14 - 1: no single Rice parameter fits both scales.
    "varint": (np.cumsum(np.tile([1, 2**14], 10)) - 1, 2**14 * 10 + 10),
    # Top-k gaps are nearly geometric: Rice codes win.
    "rice": (np.sort(np.random.default_rng(0).choice(16_384, 491, replace=False)), 16_384),
}


@pytest.mark.parametrize(
    ("case", "encoding"),
    [
        ("bitpacked", pb.INDEX_ENCODING_BITPACKED),
        ("varint", pb.INDEX_ENCODING_VARINT_GAPS),
        ("rice", pb.INDEX_ENCODING_RICE_GAPS),
    ],
)
def test_index_encoding_is_the_smallest_of_the_three(case: str, encoding: int) -> None:
    positions, size = INDEX_CASES[case]
    x, topk = _spiky(positions, size)
    pipeline = CodecPipeline([topk])
    message = pipeline.encode_tensor("t", x)
    sizes = _index_sizes(positions, size)
    assert message.index_encoding == encoding
    assert len(message.indices) == sizes[encoding] == min(sizes.values())
    np.testing.assert_array_equal(np.flatnonzero(pipeline.decode_tensor(message)), positions)


def test_rice_parameter_is_the_best_of_all_31() -> None:
    rng = np.random.default_rng(4)
    for mean in [0.1, 1.0, 7.0, 33.0, 1_000.0, 2.0**30]:
        gaps = rng.geometric(1 / (1 + mean), size=200) - 1
        best = best_rice_parameter(gaps)
        costs = [rice_bit_count(gaps, k) for k in range(31)]
        assert costs[best] == min(costs)
        assert len(encode_rice(gaps, best)) == (costs[best] + 7) // 8


@pytest.mark.parametrize("size", [2, 3, 64, 1_000, 16_384, 100_003])
def test_topk_positions_round_trip_exactly_at_any_sparsity(size: int) -> None:
    rng = np.random.default_rng(size)
    for ratio in [1e-4, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 0.7, 0.99]:
        count = TopK(ratio).keep_count(size)
        if count >= size:
            continue
        positions = np.sort(rng.choice(size, count, replace=False))
        x, topk = _spiky(positions, size)
        x[positions] *= rng.choice([-1.0, 1.0], count).astype(np.float32)
        pipeline = CodecPipeline([topk, Zlib()])
        decoded = pipeline.decode_tensor(pipeline.encode_tensor("t", x), (size,))
        np.testing.assert_array_equal(np.flatnonzero(decoded), positions)


def _rice_tensor(positions: list[int], size: int, k: int) -> pb.CompressedTensor:
    """A Rice-coded tensor with the given positions, whatever the encoder would choose."""
    gaps = np.diff(np.array(positions, dtype=np.int64), prepend=-1) - 1
    indices = encode_rice(gaps, k)
    values = np.arange(1, len(positions) + 1, dtype="<f4").tobytes()
    return pb.CompressedTensor(
        name="t",
        shape=[size],
        dtype=pb.DTYPE_FLOAT32,
        value_encoding=pb.VALUE_ENCODING_FP32,
        bits=32,
        sparsity=pb.SPARSITY_ENCODING_INDICES,
        index_encoding=pb.INDEX_ENCODING_RICE_GAPS,
        index_bits=k,
        num_values=len(positions),
        indices_size=len(indices),
        indices=indices,
        values=values,
        lossless=pb.LOSSLESS_NONE,
        crc32=zlib.crc32(values, zlib.crc32(indices)),
    )


@pytest.mark.parametrize(
    ("positions", "size"),
    [
        ([0], 1),  # a one-element tensor
        ([0], 5),  # first index, gap 0
        ([4], 5),  # last index
        ([0, 1, 2, 3, 4], 5),  # every gap 0
        ([0, 2**22 - 1], 2**22),  # first and last of a big tensor: one huge gap
        ([3, 4, 5, 2**20, 2**20 + 1, 2**22 - 2], 2**22),  # huge and zero gaps mixed
    ],
)
@pytest.mark.parametrize("short_stream_bytes", [256, 0], ids=["code-by-code", "windowed"])
def test_rice_positions_round_trip_for_every_parameter(
    positions: list[int], size: int, short_stream_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bitpack, "_SMALL_RICE_BYTES", short_stream_bytes)
    for k in range(31):
        decoded = CodecPipeline([]).decode_tensor(_rice_tensor(positions, size, k), (size,))
        assert np.flatnonzero(decoded).tolist() == positions
        assert decoded[positions].tolist() == list(range(1, len(positions) + 1))


def test_rice_gaps_up_to_the_varint_limit_round_trip() -> None:
    gaps = np.array([0, 2**35 - 1, 1, 2**34, 0, 12345], dtype=np.int64)
    for k in [17, 30]:  # k = 0 would spend 2**35 bits on the unary part
        assert decode_rice(encode_rice(gaps, k), gaps.size, k).tolist() == gaps.tolist()
    with pytest.raises(ValueError, match="below 2\\*\\*35"):
        encode_rice(np.array([2**35]), 30)


def reference_rice_decode(data: bytes, count: int, k: int) -> list[int] | None:
    """The format's definition, one bit at a time; None where the bytes are invalid."""
    bits = "".join(f"{byte:08b}" for byte in data)
    position, values = 0, []
    for _ in range(count):
        run_end = bits.find("0", position)
        if run_end < 0 or run_end + 1 + k > len(bits):
            return None
        remainder = int(bits[run_end + 1 : run_end + 1 + k] or "0", 2)
        values.append(((run_end - position) << k) | remainder)
        position = run_end + 1 + k
    if len(data) != (position + 7) // 8 or "1" in bits[position:]:
        return None
    return values if all(v < 2**35 for v in values) else None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 40), st.integers(0, 30), st.sampled_from([1, 2, 5]))
def test_rice_decoder_matches_the_definition_on_any_bytes(
    data: bytes, count: int, k: int, window: int
) -> None:
    """Also with tiny decoding windows, so codes and unary runs straddle window edges."""
    expected = reference_rice_decode(data, count, k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bitpack, "_RICE_WINDOW_BYTES", window)
        if expected is None:
            with pytest.raises(InvalidUpdate):
                decode_rice(data, count, k)
        else:
            assert decode_rice(data, count, k).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**12), max_size=60), st.integers(0, 30))
def test_rice_encoding_round_trips_with_any_parameter(gaps: list[int], k: int) -> None:
    data = encode_rice(np.array(gaps, dtype=np.int64), k)
    assert reference_rice_decode(data, len(gaps), k) == gaps
    assert decode_rice(data, len(gaps), k).tolist() == gaps


def test_rice_decoding_round_trips_10000_real_indices() -> None:
    # 10,000 codes cross the decoder's 64-code jumps over 150 times.
    positions = np.sort(np.random.default_rng(5).choice(200_000, 10_000, replace=False))
    gaps = np.diff(positions, prepend=-1) - 1
    k = best_rice_parameter(gaps)
    decoded = decode_rice(encode_rice(gaps, k), gaps.size, k)
    np.testing.assert_array_equal(decoded, gaps)
