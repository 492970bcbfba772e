"""The low-bit codec stages: signs (STC), rotated signs (DRIVE), exact signed levels, and
one top-k over the whole model. Reconstruction error, encoded size, and hostile bytes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from codec_samples import normal, roundtrip
from hostile_payloads import SHAPES, edited_update, rejects, weight

from stamen.compression import (
    CodecScope,
    UplinkCodec,
    UplinkCodecConfig,
    ValueFormat,
    decode_update,
)
from stamen.compression.codec_stages import (
    HadamardSign,
    NonZero,
    Sign,
    SignedLevels,
    TopK,
    Zlib,
)
from stamen.compression.codecs import CodecPipeline
from stamen.compression.error_feedback import ErrorFeedback
from stamen.compression.hadamard import hadamard, segments
from stamen.core.errors import ConfigError
from stamen.protos.update.v1 import update_pb2 as pb

# -- Sign (STC's ternary code under top-k) -----------------------------------------------------


def test_sign_keeps_the_signs_and_the_mean_magnitude() -> None:
    x = np.array([0.5, -1.5, 2.0, -0.25], dtype=np.float32)
    decoded = roundtrip(CodecPipeline([Sign()]), x)
    assert decoded.tolist() == pytest.approx([1.0625, -1.0625, 1.0625, -1.0625])


def test_sign_after_top_k_loses_little_of_the_largest_entries() -> None:
    # The kept entries are the largest, so their magnitudes are close to their mean.
    x = normal(20_000)
    decoded = roundtrip(CodecPipeline([TopK(0.03), Sign()]), x)
    kept = decoded != 0
    assert kept.sum() == 600
    error = np.sum((decoded[kept] - x[kept]) ** 2) / np.sum(x[kept] ** 2)
    assert error < 0.03


def test_sign_costs_one_bit_a_value() -> None:
    message = CodecPipeline([Sign()]).encode_tensor("t", normal(1001))
    assert len(message.values) == math.ceil(1001 / 8)
    assert message.bits == 1 and message.value_encoding == pb.VALUE_ENCODING_SIGN


# -- HadamardSign (DRIVE) ----------------------------------------------------------------------


def test_hadamard_transform_is_its_own_inverse_up_to_scale() -> None:
    x = normal(64)
    assert np.allclose(hadamard(hadamard(x)) / 64, x, atol=1e-6)


def test_segments_are_the_powers_of_two_of_the_length() -> None:
    assert [len(s) for s in segments(1000)] == [512, 256, 128, 64, 32, 8]
    assert segments(0) == []


def test_hadamard_error_is_about_drives_bound_on_any_input() -> None:
    # DRIVE's normalised error is about 1 - 2/pi (0.36) to pi/2 - 1 (0.57), whatever the
    # spread of the input: here a heavy-tailed vector where plain signs do much worse.
    x = (normal(4096) ** 3).astype(np.float32)
    rotated = roundtrip(CodecPipeline([HadamardSign()]), x)
    signs = roundtrip(CodecPipeline([Sign()]), x)
    energy = np.sum(x**2)
    assert np.sum((rotated - x) ** 2) / energy < 0.65
    assert np.sum((signs - x) ** 2) / energy > 0.8


def test_hadamard_is_unbiased_over_rotations() -> None:
    x = normal(256)
    mean = np.mean([roundtrip(CodecPipeline([HadamardSign()]), x, seed) for seed in range(300)], 0)
    assert np.sum((mean - x) ** 2) / np.sum(x**2) < 0.01


def test_hadamard_costs_one_bit_a_value_and_a_scale_a_segment() -> None:
    message = CodecPipeline([HadamardSign()]).encode_tensor(
        "t", normal(1000), np.random.default_rng(1)
    )
    assert len(message.values) == 4 * 6 + 1000 // 8
    assert message.rotation_seed != 0


def test_hadamard_needs_an_rng() -> None:
    with pytest.raises(ValueError, match="rotation needs an rng"):
        CodecPipeline([HadamardSign()]).encode_tensor("t", normal(8))


# -- SignedLevels and NonZero (the downlink's exact format) ------------------------------------


def test_signed_levels_round_trip_exactly() -> None:
    step = 2.0**-7
    x = (np.random.default_rng(0).integers(-300, 300, 1000) * step).astype(np.float32)
    pipeline = CodecPipeline([NonZero(), SignedLevels(step), Zlib()])
    assert np.array_equal(roundtrip(pipeline, x), x)


@pytest.mark.parametrize(("largest", "bits"), [(0, 1), (1, 2), (7, 4), (100, 8), (200, 16)])
def test_signed_levels_pick_the_narrowest_aligned_width(largest: int, bits: int) -> None:
    x = np.array([largest, -largest, 0.0], dtype=np.float32) * 0.5
    message = CodecPipeline([SignedLevels(0.5)]).encode_tensor("t", x)
    assert message.bits == bits


def test_signed_levels_refuse_values_off_the_grid() -> None:
    with pytest.raises(ValueError, match="not a multiple of the grid step"):
        CodecPipeline([SignedLevels(0.5)]).encode_tensor("t", np.array([0.3], np.float32))
    with pytest.raises(ConfigError, match="power of two"):
        SignedLevels(0.3)


def test_non_zero_sends_dense_where_that_is_smaller() -> None:
    pipeline = CodecPipeline([NonZero(), SignedLevels(1.0)])
    sparse = np.zeros(1000, np.float32)
    sparse[::100] = 1.0
    dense = np.ones(1000, np.float32)
    dense[::100] = 0.0
    assert pipeline.encode_tensor("t", sparse).sparsity == pb.SPARSITY_ENCODING_INDICES
    assert pipeline.encode_tensor("t", dense).sparsity == pb.SPARSITY_ENCODING_DENSE
    assert np.array_equal(roundtrip(pipeline, dense), dense)


# -- one vector for the whole model (layer-adaptive top-k) --------------------------------------


def _update(config: UplinkCodecConfig, bias_scale: float = 10.0) -> tuple[bytes, dict]:
    rng = np.random.default_rng(0)
    delta = {"fc.weight": normal(160).reshape(16, 10), "fc.bias": bias_scale * normal(10, seed=1)}
    encoded = UplinkCodec(config).encode(
        delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=rng
    )
    return encoded.payload, delta


def test_model_scope_sends_one_tensor_and_picks_the_largest_entries_anywhere() -> None:
    config = UplinkCodecConfig(topk_ratio=0.1, values="fp32", scope="model")
    payload, delta = _update(config)
    envelope = pb.ModelUpdate.FromString(payload)
    # One vector at one scale: no scales, no dense mask.
    assert envelope.flat and len(envelope.tensors) == 1
    assert envelope.dense == b"" and envelope.scales == b""
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    # The bias is ten times larger: a model-wide top-k spends most of its 17 slots on it.
    assert np.count_nonzero(decoded["fc.bias"]) == 10
    assert np.count_nonzero(decoded["fc.weight"]) == 7
    for name, value in decoded.items():  # fp32 values come back exactly
        kept = value != 0
        assert np.array_equal(value[kept], delta[name][kept])


def test_model_scope_sends_an_outsized_tensor_whole_in_a_second_vector() -> None:
    config = UplinkCodecConfig(topk_ratio=0.1, values="sign", scope="model")
    payload, delta = _update(config, bias_scale=1000.0)
    envelope = pb.ModelUpdate.FromString(payload)
    assert len(envelope.tensors) == 2
    assert np.unpackbits(np.frombuffer(envelope.dense, np.uint8))[:2].tolist() == [0, 1]
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    # A thousand times the weight's scale: every entry goes, with its sign and its tensor's
    # mean magnitude; the weight keeps its own top-16 at its own scale.
    bias = decoded["fc.bias"]
    assert np.count_nonzero(bias) == 10
    assert np.array_equal(np.sign(bias), np.sign(delta["fc.bias"]))
    assert np.allclose(np.abs(bias), np.mean(np.abs(delta["fc.bias"])), rtol=1e-3)
    assert np.count_nonzero(decoded["fc.weight"]) == 16
    weight = decoded["fc.weight"][decoded["fc.weight"] != 0]
    assert np.abs(weight).max() < 5  # not the bias's magnitude


def test_model_scope_keeps_batchnorm_statistics_from_taking_every_slot() -> None:
    rng = np.random.default_rng(0)
    delta = {
        "conv.weight": (rng.standard_normal(2000) * 1e-3).astype(np.float32),
        "bn.running_var": (rng.standard_normal(64) * 0.3).astype(np.float32),
    }
    config = UplinkCodecConfig(topk_ratio=0.03, values="sign", scope="model")
    encoded = UplinkCodec(config).encode(
        delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=rng
    )
    decoded = decode_update(
        encoded.payload, expected_shapes={"conv.weight": (2000,), "bn.running_var": (64,)}
    ).tensors
    assert np.count_nonzero(decoded["conv.weight"]) == 60  # the top-3% is the weight's
    assert np.count_nonzero(decoded["bn.running_var"]) == 64  # the statistics go whole
    assert len(encoded.payload) < 250


def test_model_scope_saves_a_header_per_tensor() -> None:
    flat, _ = _update(UplinkCodecConfig(topk_ratio=0.05, values="sign", scope="model"))
    per_tensor, _ = _update(UplinkCodecConfig(topk_ratio=0.05, values="sign"))
    assert len(flat) < len(per_tensor) - 20


def test_model_scope_keeps_the_residual_per_tensor() -> None:
    rng = np.random.default_rng(0)
    delta = {"a": normal(50), "b": normal(30, seed=2)}
    codec = UplinkCodec(
        UplinkCodecConfig(
            topk_ratio=0.1, values="sign", error_feedback=True, scope=CodecScope.MODEL
        )
    )
    encoded = codec.encode(delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=rng)
    decoded = decode_update(encoded.payload, expected_shapes={"a": (50,), "b": (30,)}).tensors
    assert encoded.residual is not None
    for name, value in delta.items():
        assert np.allclose(decoded[name] + encoded.residual[name], value, atol=1e-6)


def _flat_update(edit: object) -> bytes:
    return edited_update(edit, topk_ratio=0.1, values=ValueFormat.SIGN, scope=CodecScope.MODEL)  # type: ignore[arg-type]


def test_hostile_flat_updates_are_refused() -> None:
    rejects(
        _flat_update(lambda e: setattr(e.tensors[0], "name", "fc.weight")),
        "exactly one tensor, with an empty name",
    )
    rejects(_flat_update(lambda e: e.tensors.append(e.tensors[0])), "must hold 1 unnamed tensors")

    def reshape(envelope: pb.ModelUpdate) -> None:
        del envelope.tensors[0].shape[:]
        envelope.tensors[0].shape.append(171)

    rejects(_flat_update(reshape), r"expected shape \(170,\), got \(171,\)")
    rejects(_flat_update(lambda e: setattr(e, "flat", False)), "a tensor has an empty name")
    rejects(
        edited_update(lambda e: setattr(e, "dense", b"\x40"), values=ValueFormat.SIGN),
        "are for flat updates only",
    )
    rejects(_flat_update(lambda e: setattr(e, "scales", b"\x01")), "needs 2 scales")
    rejects(
        _flat_update(lambda e: setattr(e, "scales", np.array([1, -1], "<f2").tobytes())),
        "scales must be finite and not negative",
    )
    rejects(_flat_update(lambda e: setattr(e, "dense", b"\x40")), "must hold 2 unnamed tensors")
    rejects(_flat_update(lambda e: setattr(e, "dense", b"\x20")), "dense mask must hold 2 bits")
    rejects(_flat_update(lambda e: setattr(e, "dense", b"\x40\x00")), "dense mask must hold")

    def overflow(envelope: pb.ModelUpdate) -> None:
        envelope.scales = np.array([6e4, 6e4], "<f2").tobytes()
        envelope.tensors[0].scale = 1e35

    rejects(_flat_update(overflow), "not all finite once scaled")


# -- hostile bytes of the new value encodings ---------------------------------------------------


def test_sign_padding_bits_must_be_zero() -> None:
    def pad(envelope: pb.ModelUpdate) -> None:
        tensor = weight(envelope)
        values = bytearray(tensor.values)
        values[-1] |= 0x01
        tensor.values = bytes(values)

    # 160 signs fill 20 bytes exactly; the bias's 10 signs leave 6 padding bits.
    def pad_bias(envelope: pb.ModelUpdate) -> None:
        tensor = next(t for t in envelope.tensors if t.name == "fc.bias")
        values = bytearray(tensor.values)
        values[-1] |= 0x01
        tensor.values = bytes(values)

    rejects(edited_update(pad_bias, values=ValueFormat.SIGN), "non-zero padding bits")
    assert decode_update(edited_update(pad, values=ValueFormat.SIGN), expected_shapes=SHAPES)


@pytest.mark.parametrize("bits", [0, 2, 8])
def test_sign_and_hadamard_take_one_bit(bits: int) -> None:
    for values, name in ((ValueFormat.SIGN, "SIGN"), (ValueFormat.HADAMARD, "HADAMARD_SIGN")):
        rejects(
            edited_update(lambda e: setattr(weight(e), "bits", bits), values=values),
            f"bits must be one of 1 for VALUE_ENCODING_{name}",
        )


def test_hadamard_scales_must_be_finite_and_not_negative() -> None:
    def poison(value: float) -> object:
        def edit(envelope: pb.ModelUpdate) -> None:
            tensor = weight(envelope)
            tensor.values = np.array([value], "<f4").tobytes() + tensor.values[4:]

        return edit

    for value in (float("nan"), float("inf"), -1.0):
        rejects(
            edited_update(poison(value), values=ValueFormat.HADAMARD),  # type: ignore[arg-type]
            "rotation scales must be finite and non-negative",
        )
    rejects(
        edited_update(poison(3e38), values=ValueFormat.HADAMARD),  # type: ignore[arg-type]
        "decoded values are not all finite",
    )


def test_hadamard_scale_field_and_stray_seeds_are_refused() -> None:
    rejects(
        edited_update(lambda e: setattr(weight(e), "scale", 1.0), values=ValueFormat.HADAMARD),
        "scale must be 0; its scales travel in values",
    )
    rejects(
        edited_update(lambda e: setattr(weight(e), "rotation_seed", 5), values=ValueFormat.SIGN),
        "rotation seed set for a value encoding without one",
    )


def test_hadamard_value_bytes_must_hold_the_scales_and_the_signs() -> None:
    rejects(
        edited_update(
            lambda e: setattr(weight(e), "values", weight(e).values[:-1]),
            values=ValueFormat.HADAMARD,
        ),
        "value bytes for 160 values at 1 bits, expected 28",
    )


def test_signed_levels_need_a_power_of_two_scale_and_an_aligned_width() -> None:
    def levels(edit: object) -> bytes:
        def apply(envelope: pb.ModelUpdate) -> None:
            tensor = weight(envelope)
            message = CodecPipeline([SignedLevels(0.25)]).encode_tensor(
                "fc.weight", np.full((16, 10), 0.5, np.float32)
            )
            tensor.CopyFrom(message)
            edit(tensor)  # type: ignore[operator]

        return edited_update(apply)

    assert decode_update(levels(lambda t: None), expected_shapes=SHAPES)
    rejects(levels(lambda t: setattr(t, "scale", 0.3)), "need a power-of-two scale")
    rejects(levels(lambda t: setattr(t, "bits", 3)), "bits must be one of 1, 2, 4, 8, 16, 24")


# -- configs, warm-up, DGC momentum --------------------------------------------------------------


def test_momentum_needs_error_feedback() -> None:
    with pytest.raises(ConfigError, match="needs error_feedback = true"):
        UplinkCodecConfig(momentum=0.9)
    with pytest.raises(ConfigError, match=r"momentum must be in \[0, 1\)"):
        UplinkCodecConfig(momentum=1.0, error_feedback=True)


def test_warm_up_falls_geometrically_to_the_target() -> None:
    config = UplinkCodecConfig(topk_ratio=0.01, warmup_rounds=4)
    ratios = [config.ratio_at(r) for r in range(1, 7)]
    assert ratios[0] == pytest.approx(0.01**0.2)
    assert all(a > b for a, b in itertools.pairwise(ratios[:5]))
    assert ratios[4:] == [0.01, 0.01]
    assert config.at_round(9) is config


def test_dgc_momentum_accumulates_and_is_masked_where_sent() -> None:
    feedback = ErrorFeedback(CodecPipeline([TopK(0.5)]), momentum=0.5)
    delta = {"w": np.array([1.0, 0.2, 0.1, 0.0], np.float32)}
    first = feedback.encode(delta, None, np.random.default_rng(0))
    assert first.velocity is not None
    second = feedback.encode(delta, first.residual, np.random.default_rng(0), first.velocity)
    # The unsent entries carried 0.5 * their velocity plus the new delta into the residual.
    assert first.velocity["w"].tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0])
    assert second.decoded["w"][2] == pytest.approx(0.1 + 0.1 + 0.05)


def test_running_statistics_keep_no_residual_and_weights_keep_theirs() -> None:
    """A statistic's next delta already holds what this round did not send (it is the
    device's estimate minus the model's): carried over too, it would be sent twice."""
    rng = np.random.default_rng(0)
    delta = {
        "conv.weight": (rng.standard_normal(2000) * 1e-3).astype(np.float32),
        "bn.running_mean": (rng.standard_normal(64) * 0.3).astype(np.float32),
        "bn.running_var": (rng.standard_normal(64) * 0.3).astype(np.float32),
    }
    pipeline = CodecPipeline([TopK(0.03), Sign()])
    result = ErrorFeedback(pipeline, flat=True).encode(delta, None, rng)
    assert not np.any(result.residual["bn.running_mean"])
    assert not np.any(result.residual["bn.running_var"])
    assert np.any(result.decoded["bn.running_var"])  # sent, at the sign code's precision
    kept = result.residual["conv.weight"]
    assert np.allclose(kept + result.decoded["conv.weight"], delta["conv.weight"])
    assert np.count_nonzero(kept) > 1900  # what the top-3% left waits for later rounds
