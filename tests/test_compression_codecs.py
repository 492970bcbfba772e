"""Codec behaviour a user can see: error bounds, sizes, error feedback, round trips, configs.

How top-k positions are encoded (bit-packed, varint or Rice-coded gaps) is in
``test_compression_indices``.
"""

from __future__ import annotations

import numpy as np
import pytest
from codec_samples import normal, roundtrip

from stamen.compression import (
    DownlinkCodec,
    DownlinkCodecConfig,
    Lossless,
    UplinkCodec,
    UplinkCodecConfig,
    ValueFormat,
    decode_model,
    decode_update,
    dense_nbytes,
    model_hash,
)
from stamen.compression.codec_stages import FP16, Int8Symmetric, TopK, Uniform, Zlib
from stamen.compression.codecs import CodecPipeline
from stamen.core.errors import ConfigError
from stamen.protos.update.v1 import update_pb2 as pb

HASH = "ab" * 32


# -- value stages ---------------------------------------------------------------------


def test_fp16_relative_error_is_within_half_precision() -> None:
    x = normal(10_000) * 10.0
    x = x[np.abs(x) > 1e-3]  # stay in float16's normal range
    decoded = roundtrip(CodecPipeline([FP16()]), x)
    assert np.max(np.abs(decoded - x) / np.abs(x)) <= 2**-10


def test_fp16_rejects_values_beyond_its_range() -> None:
    with pytest.raises(ValueError, match="float16 range"):
        CodecPipeline([FP16()]).encode_tensor("t", np.array([1e6], dtype=np.float32))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_error_is_below_one_step(bits: int) -> None:
    x = normal(5_000, seed=bits)
    pipeline = CodecPipeline([Uniform(bits)])
    message = pipeline.encode_tensor("t", x, np.random.default_rng(1))
    decoded = pipeline.decode_tensor(message)
    assert message.scale == pytest.approx((x.max() - x.min()) / (2**bits - 1), rel=1e-6)
    assert np.max(np.abs(decoded - x)) <= message.scale * (1 + 1e-6)
    assert len(np.unique(decoded)) <= 2**bits


@pytest.mark.parametrize("bits", [2, 4])
def test_stochastic_rounding_is_unbiased(bits: int) -> None:
    x = normal(200, seed=3)
    pipeline = CodecPipeline([Uniform(bits, stochastic=True)])
    rng = np.random.default_rng(7)
    draws = 2_000
    total = np.zeros_like(x, dtype=np.float64)
    for _ in range(draws):
        total += pipeline.decode_tensor(pipeline.encode_tensor("t", x, rng))
    scale = (x.max() - x.min()) / (2**bits - 1)
    # One draw's error has std <= scale / 2, so the mean's is <= scale / (2 sqrt(draws)).
    assert np.max(np.abs(total / draws - x)) <= 5 * scale / (2 * np.sqrt(draws))
    nearest = roundtrip(CodecPipeline([Uniform(bits, stochastic=False)]), x)
    assert np.max(np.abs(nearest - x)) <= scale / 2 * (1 + 1e-6)


def test_int8_symmetric_keeps_zero_exact_and_error_below_half_step() -> None:
    x = normal(1_000)
    x[::3] = 0.0
    message = CodecPipeline([Int8Symmetric()]).encode_tensor("t", x)
    decoded = CodecPipeline([]).decode_tensor(message)
    assert np.all(decoded[::3] == 0.0)
    assert np.max(np.abs(decoded - x)) <= message.scale / 2 * (1 + 1e-6)
    assert len(message.values) == x.size


# -- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.03, 0.05])
def test_topk_indices_of_a_lenet_layer_cost_at_most_7_bits(ratio: float) -> None:
    """Top-k gaps are near-geometric; Rice codes get close to their entropy (6.5 bits at 3%)."""
    weight = normal(64 * 256, seed=11).reshape(64, 256)  # LeNet's fc1.weight
    message = CodecPipeline([TopK(ratio), Uniform(4)]).encode_tensor(
        "fc1.weight", weight, np.random.default_rng(0)
    )
    assert message.index_encoding == pb.INDEX_ENCODING_RICE_GAPS
    assert 8 * len(message.indices) / message.num_values <= 7.0


def test_topk_one_percent_with_q4_is_over_50x_smaller_than_fp32() -> None:
    n = 100_000
    codec = UplinkCodec(UplinkCodecConfig(topk_ratio=0.01, values=ValueFormat.Q4))
    encoded = codec.encode(
        {"w": normal(n)},
        round_num=1,
        base_model_hash=HASH,
        residual=None,
        rng=np.random.default_rng(0),
    )
    assert 4 * n / len(encoded.payload) >= 50


def test_downlink_q8_with_half_masked_is_over_6x_smaller_than_fp32() -> None:
    n = 100_000
    model = {"w": normal(n)}
    masks = {"w": np.random.default_rng(1).random(n) < 0.5}
    encoded = DownlinkCodec(DownlinkCodecConfig(values=ValueFormat.Q8)).encode(
        model, round_num=1, masks=masks
    )
    assert dense_nbytes(model) / len(encoded.payload) >= 6


def test_zlib_shrinks_redundant_bytes_and_stays_lossless() -> None:
    x = np.repeat(normal(100), 100)  # 100 distinct values, each repeated
    plain = CodecPipeline([]).encode_tensor("t", x)
    zipped = CodecPipeline([Zlib()]).encode_tensor("t", x)
    assert zipped.lossless == pb.LOSSLESS_ZLIB
    assert len(zipped.values) < len(plain.values) / 3
    np.testing.assert_array_equal(CodecPipeline([]).decode_tensor(zipped), x)


def test_zlib_is_skipped_when_it_would_grow_the_tensor() -> None:
    message = CodecPipeline([Zlib()]).encode_tensor("t", normal(4))
    assert message.lossless == pb.LOSSLESS_NONE


def test_dense_nbytes_counts_float32() -> None:
    assert dense_nbytes({"a": np.zeros((3, 4), np.float64), "b": (5,)}) == 4 * 17
    assert dense_nbytes([(2, 2), np.zeros(3)]) == 4 * 7


# -- error feedback ---------------------------------------------------------------------


def _run_rounds(error_feedback: bool, rounds: int = 60) -> tuple[float, float, float]:
    """Returns (|sum decoded - sum true|, |final residual|, |one delta|)."""
    codec = UplinkCodec(
        UplinkCodecConfig(topk_ratio=0.05, values=ValueFormat.Q2, error_feedback=error_feedback)
    )
    data_rng, codec_rng = np.random.default_rng(0), np.random.default_rng(1)
    drift = normal(1_000, seed=9) * 0.1  # a consistent direction, as in real training
    true_sum = np.zeros(1_000, np.float64)
    decoded_sum = np.zeros(1_000, np.float64)
    residual = None
    for round_num in range(rounds):
        delta = drift + 0.05 * data_rng.standard_normal(1_000).astype(np.float32)
        encoded = codec.encode(
            {"w": delta},
            round_num=round_num,
            base_model_hash=HASH,
            residual=residual,
            rng=codec_rng,
        )
        residual = encoded.residual
        decoded = decode_update(encoded.payload, expected_shapes={"w": (1_000,)})
        true_sum += delta
        decoded_sum += decoded.tensors["w"]
    final = 0.0 if residual is None else float(np.linalg.norm(residual["w"]))
    return float(np.linalg.norm(decoded_sum - true_sum)), final, float(np.linalg.norm(drift))


def test_error_feedback_sum_of_decoded_tracks_sum_of_deltas() -> None:
    tracking, residual_norm, _ = _run_rounds(error_feedback=True, rounds=160)
    # The gap between the sums is exactly the residual ...
    assert tracking == pytest.approx(residual_norm, rel=1e-3)
    # ... and it stays bounded: 4x the rounds barely moves it, while without
    # feedback the dropped mass piles up round after round.
    _, early_residual_norm, _ = _run_rounds(error_feedback=True, rounds=40)
    assert residual_norm < 1.2 * early_residual_norm
    without, _, _ = _run_rounds(error_feedback=False, rounds=160)
    assert tracking < without / 10


@pytest.mark.parametrize(
    "stages",
    [
        [TopK(0.05), Uniform(bits=4), Zlib()],
        [TopK(0.3), Uniform(bits=2, stochastic=False)],
        [Uniform(bits=8)],
        [TopK(0.1), Int8Symmetric()],
        [FP16(), Zlib()],
        [TopK(0.5)],
    ],
    ids=["topk-q4-zlib", "topk-q2-nearest", "q8", "topk-int8", "fp16-zlib", "topk-fp32"],
)
def test_the_encoder_reconstructs_exactly_what_the_receiver_decodes(stages: list[object]) -> None:
    # Error feedback keeps "corrected - reconstruction" as its residual: any gap to what
    # the server decodes would be mass lost for good.
    pipeline = CodecPipeline(stages)  # type: ignore[arg-type]
    for seed, x in enumerate([normal(3_000), np.zeros(40, np.float32), normal(1).reshape(1, 1)]):
        message, reconstruction = pipeline.encode_and_reconstruct(
            "t", x, np.random.default_rng(seed)
        )
        decoded = pipeline.decode_tensor(message, x.shape)
        assert reconstruction.shape == x.shape and reconstruction.dtype == np.float32
        assert np.array_equal(reconstruction, decoded)


def test_masked_encoding_reconstructs_exactly_what_the_receiver_decodes() -> None:
    x = normal(500)
    mask = np.random.default_rng(1).random(500) < 0.4
    message, reconstruction = CodecPipeline([Uniform(bits=8)]).encode_and_reconstruct(
        "t", x, np.random.default_rng(0), mask=mask
    )
    decoded = CodecPipeline([]).decode_tensor(message, x.shape)
    assert np.array_equal(reconstruction, decoded)
    assert not reconstruction[~mask].any()


def test_residual_is_none_without_error_feedback() -> None:
    codec = UplinkCodec(UplinkCodecConfig(topk_ratio=0.5))
    encoded = codec.encode(
        {"w": normal(10)},
        round_num=0,
        base_model_hash=HASH,
        residual={"w": normal(10)},
        rng=np.random.default_rng(0),
    )
    assert encoded.residual is None


def test_residual_shape_mismatch_is_reported() -> None:
    codec = UplinkCodec(UplinkCodecConfig(topk_ratio=0.5, error_feedback=True))
    with pytest.raises(ValueError, match="residual for 'w' has shape"):
        codec.encode(
            {"w": normal(10)},
            round_num=0,
            base_model_hash=HASH,
            residual={"w": normal(3)},
            rng=np.random.default_rng(0),
        )


# -- determinism and round trips ------------------------------------------------------------


def test_encoding_is_deterministic_given_the_seed() -> None:
    codec = UplinkCodec(UplinkCodecConfig(topk_ratio=0.2, values=ValueFormat.Q4))
    delta = {"a": normal(500), "b": normal(30, seed=1)}

    def encode(seed: int) -> bytes:
        return codec.encode(
            delta, round_num=4, base_model_hash=HASH, residual=None, rng=np.random.default_rng(seed)
        ).payload

    assert encode(5) == encode(5)
    assert encode(5) != encode(6)


def test_update_round_trip_carries_round_hash_and_values() -> None:
    delta = {"conv.weight": normal(8 * 1 * 5 * 5).reshape(8, 1, 5, 5), "conv.bias": normal(8)}
    codec = UplinkCodec(UplinkCodecConfig(values=ValueFormat.FP16, lossless=Lossless.ZLIB))
    encoded = codec.encode(
        delta, round_num=7, base_model_hash=HASH, residual=None, rng=np.random.default_rng(0)
    )
    shapes = {name: value.shape for name, value in delta.items()}
    decoded = decode_update(encoded.payload, expected_shapes=shapes)
    assert (decoded.round_num, decoded.base_model_hash) == (7, HASH)
    for name, value in delta.items():
        assert decoded.tensors[name].dtype == np.float32
        np.testing.assert_allclose(decoded.tensors[name], value, rtol=2**-10, atol=1e-7)


def test_model_round_trip_verifies_hash_and_returns_masks() -> None:
    model = {"fc.weight": normal(64 * 10).reshape(64, 10), "fc.bias": normal(10)}
    mask = np.random.default_rng(2).random((64, 10)) < 0.3
    encoded = DownlinkCodec(DownlinkCodecConfig(values=ValueFormat.Q8)).encode(
        model, round_num=2, masks={"fc.weight": mask}
    )
    received = decode_model(
        encoded.payload, expected_shapes={"fc.weight": (64, 10), "fc.bias": (10,)}
    )
    assert received.round_num == 2
    assert received.model_hash == encoded.model_hash == model_hash(encoded.decoded)
    np.testing.assert_array_equal(received.masks["fc.weight"], mask)
    assert "fc.bias" not in received.masks
    for name in model:
        np.testing.assert_array_equal(received.tensors[name], encoded.decoded[name])
    assert np.all(received.tensors["fc.weight"][~mask] == 0.0)


def test_model_hash_changes_with_any_value_name_or_shape() -> None:
    base = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    digest = model_hash(base)
    assert len(digest) == 64
    changed = base["w"].copy()
    changed[1, 2] += 1e-6
    assert model_hash({"w": changed}) != digest
    assert model_hash({"v": base["w"]}) != digest
    assert model_hash({"w": base["w"].reshape(3, 2)}) != digest


# -- configs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: UplinkCodecConfig(topk_ratio=0.0), "topk_ratio must be in (0, 1]; got 0.0"),
        (lambda: UplinkCodecConfig(topk_ratio=1.5), "topk_ratio must be in (0, 1]; got 1.5"),
        (
            lambda: UplinkCodecConfig(values="q3"),
            "values must be one of fp32, fp16, q8, q4, q2, sign, hadamard; got 'q3'",
        ),
        (lambda: UplinkCodecConfig(lossless="gzip"), "lossless must be one of none, zlib"),
        (lambda: UplinkCodecConfig(error_feedback="yes"), "error_feedback must be true or false"),
        (
            lambda: DownlinkCodecConfig(values=ValueFormat.Q4),
            "values must be one of fp32, fp16, q8; got",
        ),
        (lambda: Uniform(bits=3), "bits must be one of 2, 4, 8; got 3"),
        (lambda: TopK(0), "topk ratio must be in (0, 1]"),
        (lambda: CodecPipeline([Zlib(), TopK(0.5)]), "codec stages must be"),
        (lambda: CodecPipeline([FP16(), Uniform(4)]), "codec stages must be"),
    ],
)
def test_invalid_configs_raise_one_line_config_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make()  # type: ignore[operator]
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_configs_accept_strings_from_toml() -> None:
    config = UplinkCodecConfig(topk_ratio=1, values="q4", lossless="zlib")
    assert (config.values, config.lossless, config.topk_ratio) == (
        ValueFormat.Q4,
        Lossless.ZLIB,
        1.0,
    )
    assert DownlinkCodecConfig(values="q8").values is ValueFormat.Q8
