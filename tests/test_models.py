"""Tests for stamen.models: architectures, specs, and the exchanged state."""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from stamen.compression import QATConfig, prepare_qat
from stamen.core.errors import ConfigError
from stamen.models import (
    ModelName,
    ModelSpec,
    build_model,
    count_parameters,
    exchanged_state,
    load_exchanged_state,
)

IMAGE_SHAPES = [(1, 28, 28), (1, 8, 8)]


@pytest.mark.parametrize("name", [ModelName.LENET, ModelName.MOBILENET, ModelName.MLP])
@pytest.mark.parametrize("input_shape", IMAGE_SHAPES)
def test_every_model_classifies_mnist_and_digits_sized_images(
    name: ModelName, input_shape: tuple[int, ...]
) -> None:
    model = build_model(ModelSpec(name, input_shape, num_classes=10), seed=0)
    logits = model(torch.randn(3, *input_shape))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("features", [24, 60])
def test_mlp_takes_sensor_feature_vectors(features: int) -> None:
    model = build_model(ModelSpec("mlp", (features,), num_classes=7), seed=0)
    assert model(torch.randn(5, features)).shape == (5, 7)


def test_lenet_is_the_reference_w1_network_on_28x28() -> None:
    model = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10))
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes["conv1.weight"] == (8, 1, 5, 5)
    assert shapes["conv2.weight"] == (16, 8, 5, 5)
    assert shapes["fc1.weight"] == (64, 256)
    assert shapes["classifier.weight"] == (10, 64)
    assert count_parameters(model) == 20_522


def test_lenet_pads_small_images_and_sizes_its_first_fc_layer_from_them() -> None:
    model = build_model(ModelSpec("lenet", (3, 8, 8), num_classes=4))
    assert model.conv1.padding == (2, 2)
    assert model.conv1.in_channels == 3
    assert model.fc1.in_features == 16 * 2 * 2


def test_width_scales_channels_to_multiples_of_four() -> None:
    full = build_model(ModelSpec("mobilenet", (1, 28, 28), num_classes=10))
    half = build_model(ModelSpec("mobilenet", (1, 28, 28), num_classes=10, width=0.5))
    tiny = build_model(ModelSpec("mobilenet", (1, 28, 28), num_classes=10, width=0.01))
    assert count_parameters(half) < count_parameters(full) / 2.5
    for model in (half, tiny):
        channels = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(c % 4 == 0 and c >= 4 for c in channels)
    assert min(m.out_channels for m in tiny.modules() if isinstance(m, nn.Conv2d)) == 4
    mlp = build_model(ModelSpec("mlp", (24,), num_classes=7, width=0.5))
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [64, 32, 7]


def test_seed_makes_initial_weights_reproducible_and_leaves_global_rng_alone() -> None:
    spec = ModelSpec("mobilenet", (1, 8, 8), num_classes=10)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = exchanged_state(build_model(spec, seed=7))
    assert torch.equal(torch.rand(3), expected_draw)
    second = exchanged_state(build_model(spec, seed=7))
    other = exchanged_state(build_model(spec, seed=8))
    assert all(np.array_equal(first[key], second[key]) for key in first)
    assert not np.array_equal(first["stem.0.weight"], other["stem.0.weight"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet"}, "name must be one of lenet, mobilenet, mlp; got 'resnet'"),
        ({"width": 0.0}, "width must be a finite number > 0; got 0.0"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2; got 1"),
        ({"input_shape": (28, 28)}, "input_shape must be (C, H, W) or (F,)"),
        ({"input_shape": (0, 8, 8)}, "input_shape must be (C, H, W) or (F,)"),
        ({"input_shape": (24,)}, "input_shape must be (C, H, W) for lenet; got (24,)"),
    ],
)
def test_invalid_spec_names_the_field_and_allowed_values(
    kwargs: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"name": "lenet", "input_shape": (1, 8, 8), "num_classes": 10}
    fields.update(kwargs)
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as error:
        ModelSpec(**fields)
    assert "\n" not in str(error.value)


def test_lenet_rejects_images_too_small_for_two_pools() -> None:
    with pytest.raises(ConfigError, match="at least 4x4 pixels for lenet"):
        build_model(ModelSpec("lenet", (1, 3, 3), num_classes=10))


def test_spec_accepts_toml_style_values() -> None:
    spec = ModelSpec("mlp", [60], num_classes=6, width=2)
    assert spec == ModelSpec(ModelName.MLP, (60,), 6, 2.0)


def test_exchanged_state_is_float32_copies_of_params_and_float_buffers() -> None:
    model = build_model(ModelSpec("mobilenet", (1, 8, 8), num_classes=10), seed=0)
    state = exchanged_state(model)
    float_keys = {key for key, value in model.state_dict().items() if value.is_floating_point()}
    assert set(state) == float_keys
    assert "stem.1.running_var" in state
    assert not any(key.endswith("num_batches_tracked") for key in state)
    assert all(value.dtype == np.float32 for value in state.values())
    state["stem.0.weight"][...] = 0.0
    assert model.stem[0].weight.abs().sum() > 0


def test_loaded_state_reproduces_the_source_model_outputs() -> None:
    spec = ModelSpec("mobilenet", (1, 8, 8), num_classes=10)
    source, target = build_model(spec, seed=1), build_model(spec, seed=2)
    source(torch.randn(16, 1, 8, 8))  # moves the BatchNorm running statistics
    load_exchanged_state(target, exchanged_state(source))
    source.eval()
    target.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(source(x), target(x))


def test_load_rejects_missing_extra_and_misshaped_tensors_by_name() -> None:
    model = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    before = exchanged_state(model)
    missing = dict(before)
    del missing["fc1.bias"]
    with pytest.raises(ValueError, match=r"'fc1\.bias'"):
        load_exchanged_state(model, missing)
    with pytest.raises(ValueError, match=r"'extra\.weight'"):
        load_exchanged_state(model, {**before, "extra.weight": np.zeros(3, np.float32)})
    misshaped = {key: np.zeros_like(value) for key, value in before.items()}
    misshaped["conv2.weight"] = np.zeros((16, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'conv2.weight' has shape \(16, 8, 3, 3\)"):
        load_exchanged_state(model, misshaped)
    after = exchanged_state(model)
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_qat_prepared_model_exchanges_the_same_keys_without_observers() -> None:
    spec = ModelSpec("mobilenet", (1, 8, 8), num_classes=10)
    plain = build_model(spec, seed=0)
    qat = prepare_qat(build_model(spec, seed=0), QATConfig())
    qat(torch.randn(8, 1, 8, 8))
    assert any("input_quantizer" in key for key in qat.state_dict())
    assert list(exchanged_state(qat)) == list(exchanged_state(plain))
    load_exchanged_state(qat, exchanged_state(plain))


def test_pruned_model_exchanges_the_effective_weight_under_the_plain_name() -> None:
    model = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    keys = list(exchanged_state(model))
    mask = torch.rand_like(model.fc1.weight) > 0.5
    prune.custom_from_mask(model.fc1, "weight", mask)
    with torch.no_grad():
        model.fc1.weight_orig.add_(1.0)  # as an optimizer step would, leaving `weight` stale
    state = exchanged_state(model)
    assert list(state) == keys
    expected = (model.fc1.weight_orig * model.fc1.weight_mask).detach().numpy()
    np.testing.assert_array_equal(state["fc1.weight"], expected)

    load_exchanged_state(model, {key: np.ones_like(value) for key, value in state.items()})
    reloaded = exchanged_state(model)["fc1.weight"]
    np.testing.assert_array_equal(reloaded, mask.float().numpy())  # pruned entries stay zero


def test_module_examples_run() -> None:
    for name in ("spec", "architectures", "build", "state"):
        module = importlib.import_module(f"stamen.models.{name}")
        result = doctest.testmod(module)
        assert result.attempted > 0, name
        assert result.failed == 0, name
