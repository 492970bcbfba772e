"""Options of one top-k over the whole model: a value scale per tensor
(``uplink.tensor_scales``) and 1-D tensors sent whole (``uplink.whole_vectors``).
Reconstruction error, encoded size, hostile bytes, and the train task that carries them."""

from __future__ import annotations

import numpy as np
import pytest
from codec_samples import normal
from hostile_payloads import SHAPES, edited_update, rejects

from stamen.compression import CodecScope, UplinkCodec, UplinkCodecConfig, decode_update
from stamen.contract.task import TrainTask
from stamen.core.errors import ConfigError
from stamen.protos.update.v1 import update_pb2 as pb


def _update(tensor_scales: bool, error_feedback: bool = False) -> tuple[bytes, dict, object]:
    """Two tensors 8x apart in scale, neither far enough apart to go whole."""
    delta = {"fc.weight": normal(160).reshape(16, 10), "fc.bias": 8.0 * normal(10, seed=1)}
    config = UplinkCodecConfig(
        topk_ratio=0.2,
        values="sign",
        scope="model",
        tensor_scales=tensor_scales,
        error_feedback=error_feedback,
    )
    encoded = UplinkCodec(config).encode(
        delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=np.random.default_rng(0)
    )
    return encoded.payload, delta, encoded


def _kept_error(decoded: dict[str, np.ndarray], delta: dict[str, np.ndarray], name: str) -> float:
    """Relative error of a tensor's kept entries."""
    kept = decoded[name] != 0
    return float(np.linalg.norm(decoded[name][kept] - delta[name][kept])) / float(
        np.linalg.norm(delta[name][kept])
    )


def test_each_tensor_comes_back_at_its_own_scale() -> None:
    payload, delta, _ = _update(tensor_scales=True)
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    for name, value in decoded.items():
        kept = value != 0
        assert np.array_equal(np.sign(value[kept]), np.sign(delta[name][kept]))
        # Every kept entry is its own tensor's mean kept magnitude (float16, so 1e-3).
        assert np.allclose(np.abs(value[kept]), np.mean(np.abs(delta[name][kept])), rtol=2e-3)


def test_the_smaller_tensor_loses_less_than_under_one_shared_scale() -> None:
    own, delta, _ = _update(tensor_scales=True)
    shared, _, _ = _update(tensor_scales=False)
    with_own = decode_update(own, expected_shapes=SHAPES).tensors
    with_shared = decode_update(shared, expected_shapes=SHAPES).tensors
    # The same entries are kept: the selection is one top-k by raw magnitude either way.
    for name in SHAPES:
        assert np.array_equal(with_own[name] != 0, with_shared[name] != 0)
    # The weight's few kept entries are far below the bias's: one shared scale overshoots them.
    assert _kept_error(with_own, delta, "fc.weight") < 0.5
    assert _kept_error(with_shared, delta, "fc.weight") > 2 * _kept_error(
        with_own, delta, "fc.weight"
    )


def test_it_costs_a_float16_a_tensor_and_no_mask() -> None:
    own, _, _ = _update(tensor_scales=True)
    shared, _, _ = _update(tensor_scales=False)
    envelope = pb.ModelUpdate.FromString(own)
    assert len(envelope.scales) == 2 * len(SHAPES) and envelope.dense == b""
    assert len(envelope.tensors) == 1
    # Two bytes a tensor plus the field's tag and length.
    assert len(own) - len(shared) <= 2 * len(SHAPES) + 2


def test_error_feedback_keeps_what_the_scales_did_not_send() -> None:
    payload, delta, encoded = _update(tensor_scales=True, error_feedback=True)
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    residual = encoded.residual  # type: ignore[attr-defined]
    for name, value in delta.items():
        assert np.allclose(decoded[name] + residual[name], value, atol=1e-5)


def _scaled_update(edit: object) -> bytes:
    return edited_update(
        edit,  # type: ignore[arg-type]
        topk_ratio=0.1,
        values="sign",
        scope=CodecScope.MODEL,
        tensor_scales=True,
    )


def test_hostile_tensor_scales_are_refused() -> None:
    rejects(_scaled_update(lambda e: setattr(e, "scales", b"\x00\x3c")), "needs 2 scales")
    rejects(
        _scaled_update(lambda e: setattr(e, "scales", np.array([1, np.nan], "<f2").tobytes())),
        "scales must be finite and not negative",
    )
    rejects(
        _scaled_update(lambda e: setattr(e, "scales", np.array([1, -2], "<f2").tobytes())),
        "scales must be finite and not negative",
    )

    def overflow(envelope: pb.ModelUpdate) -> None:
        envelope.scales = np.array([6e4, 6e4], "<f2").tobytes()
        envelope.tensors[0].scale = 1e35

    rejects(_scaled_update(overflow), "not all finite once scaled")


@pytest.mark.parametrize("field", ["tensor_scales", "whole_vectors"])
def test_the_options_must_be_true_or_false(field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be true or false"):
        UplinkCodecConfig(scope="model", **{field: "yes"})  # type: ignore[arg-type]


def test_the_train_task_carries_the_settings_to_devices() -> None:
    uplink = UplinkCodecConfig(scope="model", tensor_scales=True, whole_vectors=True)
    record = TrainTask(uplink=uplink).to_config_record()
    assert TrainTask.from_config_record(record).uplink == uplink
    del record["stamen.tensor-scales"], record["stamen.whole-vectors"]  # an older server's
    parsed = TrainTask.from_config_record(record).uplink
    assert not parsed.tensor_scales and not parsed.whole_vectors


def _vectors_update(whole_vectors: bool) -> tuple[bytes, dict]:
    delta = {"fc.weight": normal(160).reshape(16, 10), "fc.bias": 0.5 * normal(10, seed=1)}
    config = UplinkCodecConfig(
        topk_ratio=0.1, values="sign", scope="model", whole_vectors=whole_vectors
    )
    encoded = UplinkCodec(config).encode(
        delta, round_num=1, base_model_hash="ab" * 32, residual=None, rng=np.random.default_rng(0)
    )
    return encoded.payload, delta


def test_whole_vectors_send_every_bias_entry_at_its_own_scale() -> None:
    payload, delta = _vectors_update(whole_vectors=True)
    envelope = pb.ModelUpdate.FromString(payload)
    assert len(envelope.tensors) == 2  # the top-k's vector and the whole one
    assert np.unpackbits(np.frombuffer(envelope.dense, np.uint8))[:2].tolist() == [0, 1]
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    bias = decoded["fc.bias"]
    assert np.array_equal(np.sign(bias), np.sign(delta["fc.bias"]))
    assert np.allclose(np.abs(bias), np.mean(np.abs(delta["fc.bias"])), rtol=2e-3)
    # The top-k is the weight's alone: 10% of its 160 entries.
    assert np.count_nonzero(decoded["fc.weight"]) == 16
    # Without the option, the small bias gets few or none of the top-k's slots.
    shared = decode_update(_vectors_update(whole_vectors=False)[0], expected_shapes=SHAPES)
    assert np.count_nonzero(shared.tensors["fc.bias"]) < 10


def test_whole_vectors_cost_a_bit_an_entry_and_a_scale_a_tensor() -> None:
    whole, _ = _vectors_update(whole_vectors=True)
    shared, _ = _vectors_update(whole_vectors=False)
    # 10 bias bits (2 bytes), the bias's float16 scale, a 1-byte mask, a second vector's header.
    assert 0 < len(whole) - len(shared) < 60


def test_only_the_tensors_sent_whole_carry_a_scale_and_all_tensors_scales_still_decode() -> None:
    payload, _ = _vectors_update(whole_vectors=True)
    envelope = pb.ModelUpdate.FromString(payload)
    assert len(envelope.scales) == 2  # the bias's; the top-k's weight shares the code's scale
    decoded = decode_update(payload, expected_shapes=SHAPES).tensors
    # An encoder that sends every tensor's scale (1 for the top-k's) says the same.
    every = np.concatenate([np.ones(1, "<f2"), np.frombuffer(envelope.scales, "<f2")])
    envelope.scales = every.astype("<f2").tobytes()
    spelled_out = decode_update(envelope.SerializeToString(), expected_shapes=SHAPES).tensors
    for name, value in decoded.items():
        assert np.array_equal(spelled_out[name], value)


@pytest.mark.parametrize("field", ["tensor_scales", "whole_vectors"])
def test_the_options_need_the_model_scope(field: str) -> None:
    with pytest.raises(ConfigError, match='it needs scope = "model"'):
        UplinkCodecConfig(scope="tensor", **{field: True})
