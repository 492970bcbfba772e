"""Tests for quantization-aware training: fake quantizers, QAT layers and prepare_qat."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from stamen.compression import QATConfig, prepare_qat
from stamen.compression.fake_quant import ActivationFakeQuantizer, fake_quantize_weight
from stamen.compression.qat import FoldedBatchNorm2d, QATConv2d, QATConvBn2d, QATLinear
from stamen.core.errors import ConfigError
from stamen.models import ModelSpec, build_model, exchanged_state


def _observed(layer: QATLinear | QATConv2d, x: torch.Tensor) -> QATLinear | QATConv2d:
    """Run one training batch so the input range is observed, then freeze it."""
    layer.train()
    layer(x)
    return layer.eval()


def _int8_input(layer: QATLinear | QATConv2d, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Quantize ``x`` to int8 as the deployed layer would; return ``(q - zero_point, scale)``."""
    scale, zero_point = layer.input_quantizer.qparams()
    q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127).to(torch.int64)
    return q - zero_point.to(torch.int64), float(scale)


def _int_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel integers and scales, computed independently of stamen."""
    bound = 2 ** (bits - 1) - 1
    scale = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1) / bound
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.clamp(torch.round(weight.detach() / scale.reshape(shape)), -bound, bound)
    return q.to(torch.int64), scale


def test_gradients_flow_straight_through_fake_quantization() -> None:
    weight = torch.randn(6, 10, requires_grad=True)
    (fake_quantize_weight(weight, 4) * torch.randn(6, 10)).sum().backward()
    assert weight.grad is not None and (weight.grad != 0).all()

    layer = QATLinear(10, 4, config=QATConfig(weight_bits=2))
    x = torch.randn(8, 10, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias is not None and layer.bias.grad is not None


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_weights_take_at_most_2_pow_bits_minus_1_levels_per_channel(bits: int) -> None:
    weight = torch.randn(16, 3, 5, 5)
    quantized = fake_quantize_weight(weight, bits)
    for channel in quantized:
        assert channel.unique().numel() <= 2**bits - 1
    # Rounding error is at most half a step of each channel's grid.
    step = weight.abs().amax(dim=(1, 2, 3), keepdim=True) / (2 ** (bits - 1) - 1)
    assert ((quantized - weight).abs() <= step / 2 + 1e-6).all()
    assert fake_quantize_weight(torch.zeros(2, 3), bits).eq(0).all()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_qat_linear_matches_integer_arithmetic(bits: int) -> None:
    """Eval output equals int8 inputs x int weights accumulated in int64, then rescaled.

    Tolerance: max abs difference <= 1e-4 x the output range (float32 rounding only).
    """
    torch.manual_seed(0)
    layer = QATLinear(32, 12, config=QATConfig(weight_bits=bits))
    x = torch.randn(64, 32) * 2 + 0.5
    _observed(layer, x)
    with torch.no_grad():
        fake = layer(x)
    q_x, scale_x = _int8_input(layer, x)
    q_w, scale_w = _int_weight(layer.weight, bits)
    accumulator = q_x @ q_w.T  # int64
    assert layer.bias is not None
    integer = accumulator.double() * scale_x * scale_w.double() + layer.bias.detach().double()
    tolerance = 1e-4 * float(integer.max() - integer.min())
    assert (fake.double() - integer).abs().max() <= tolerance


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_qat_conv2d_matches_integer_arithmetic(bits: int) -> None:
    """Eval output equals an int64 convolution of int8 inputs and int weights, rescaled.

    Tolerance: max abs difference <= 1e-4 x the output range (float32 rounding only).
    """
    torch.manual_seed(0)
    layer = QATConv2d(3, 8, 3, padding=1, config=QATConfig(weight_bits=bits))
    x = torch.rand(4, 3, 10, 10) * 3 - 0.5
    _observed(layer, x)
    with torch.no_grad():
        fake = layer(x)
    q_x, scale_x = _int8_input(layer, x)
    q_w, scale_w = _int_weight(layer.weight, bits)
    # Integer-valued float64 is exact far beyond these sums (< 2**53), so this is int math.
    accumulator = F.conv2d(q_x.double(), q_w.double(), padding=1)
    assert torch.equal(accumulator, accumulator.round())
    assert layer.bias is not None
    integer = accumulator * scale_x * scale_w.double().reshape(1, -1, 1, 1)
    integer = integer + layer.bias.detach().double().reshape(1, -1, 1, 1)
    tolerance = 1e-4 * float(integer.max() - integer.min())
    assert (fake.double() - integer).abs().max() <= tolerance


def test_conv_bn_quantizes_the_folded_weight_the_deployed_conv_uses() -> None:
    """Eval output equals the int64 conv with BN-folded int8 weights plus the folded bias.

    Tolerance: max abs difference <= 1e-4 x the output range (float32 rounding only).
    """
    torch.manual_seed(0)
    batch_norm = nn.BatchNorm2d(6)
    with torch.no_grad():
        batch_norm.weight.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, bias=False), batch_norm, nn.ReLU())
    prepare_qat(model, QATConfig(weight_bits=8))
    conv = model[0]
    assert isinstance(conv, QATConvBn2d)
    assert isinstance(model[1], FoldedBatchNorm2d)
    x = torch.randn(16, 2, 8, 8)
    model(x)  # training batch: observes the input range, updates running statistics
    assert model[1].num_batches_tracked == 1
    model.eval()
    with torch.no_grad():
        fake = conv(x)
        folded_weight, folded_bias = conv.folded_weight_and_bias()
    q_x, scale_x = _int8_input(conv, x)
    q_w, scale_w = _int_weight(folded_weight, 8)
    accumulator = F.conv2d(q_x.double(), q_w.double())
    integer = accumulator * scale_x * scale_w.double().reshape(1, -1, 1, 1)
    integer = integer + folded_bias.detach().double().reshape(1, -1, 1, 1)
    tolerance = 1e-4 * float(integer.max() - integer.min())
    assert (fake.double() - integer).abs().max() <= tolerance


@pytest.mark.parametrize(
    ("name", "max_relative_error"),
    # MobileNet's eleven BatchNorm-normalised layers compound the rounding noise more.
    [("lenet", 0.02), ("mobilenet", 0.1)],
)
def test_8_bit_qat_model_stays_close_to_the_float_model(
    name: str, max_relative_error: float
) -> None:
    spec = ModelSpec(name, (1, 8, 8), num_classes=10)
    float_model = build_model(spec, seed=0)
    qat_model = prepare_qat(build_model(spec, seed=0), QATConfig(weight_bits=8))
    calibration = torch.randn(64, 1, 8, 8)
    # Training mode: BatchNorm normalises with batch statistics in both models.
    with torch.no_grad():
        train_expected, train_actual = float_model(calibration), qat_model(calibration)
    train_error = (train_actual - train_expected).norm() / train_expected.norm()
    assert train_error < max_relative_error
    float_model.eval()
    qat_model.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        expected, actual = float_model(x), qat_model(x)
    relative_error = (actual - expected).norm() / expected.norm()
    assert relative_error < max_relative_error
    assert not torch.equal(actual, expected)


def test_observer_follows_a_moving_average_in_training_and_freezes_in_eval() -> None:
    quantizer = ActivationFakeQuantizer(momentum=0.5)
    x = torch.tensor([-1.0, 3.0])
    assert torch.equal(quantizer.eval()(x), x)  # nothing observed yet: passes through
    quantizer.train()
    quantizer(torch.tensor([-1.0, 3.0]))
    quantizer(torch.tensor([-3.0, 5.0]))
    assert quantizer.running_min.item() == pytest.approx(-2.0)
    assert quantizer.running_max.item() == pytest.approx(4.0)
    quantizer.eval()
    quantizer(torch.tensor([-100.0, 100.0]))
    assert quantizer.running_max.item() == pytest.approx(4.0)
    out = quantizer(torch.tensor([0.0, 10.0]))
    assert out[0] == 0.0  # zero is exactly representable
    assert out[1] == pytest.approx(4.0, abs=6.0 / 255)  # clipped to the frozen range


def test_qat_lenet_trains_on_a_small_batch() -> None:
    torch.manual_seed(0)
    prototypes = torch.randn(10, 1, 8, 8)
    labels = torch.arange(10).repeat(6)
    images = prototypes[labels] + 0.3 * torch.randn(60, 1, 8, 8)
    model = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    prepare_qat(model, QATConfig(weight_bits=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_prepare_qat_swaps_layers_in_place_and_keeps_parameter_objects() -> None:
    model = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    parameters = list(model.parameters())
    before = exchanged_state(model)
    assert prepare_qat(model, QATConfig()) is model
    assert isinstance(model.conv1, QATConv2d)
    assert isinstance(model.classifier, QATLinear)
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]
    after = exchanged_state(model)
    assert all((before[key] == after[key]).all() for key in before)


def test_prepare_qat_refuses_a_prepared_or_pruned_model() -> None:
    model = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    prepare_qat(model, QATConfig())
    with pytest.raises(ValueError, match="already prepared for QAT"):
        prepare_qat(model, QATConfig())
    pruned = build_model(ModelSpec("lenet", (1, 8, 8), num_classes=10), seed=0)
    prune.l1_unstructured(pruned.fc1, "weight", amount=0.5)
    with pytest.raises(ValueError, match="before pruning"):
        prepare_qat(pruned, QATConfig())


def test_pruning_mask_on_a_qat_conv_keeps_quantized_weights_at_zero() -> None:
    model = prepare_qat(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), QATConfig(weight_bits=4)
    )
    conv = model[0]
    mask = torch.ones_like(conv.weight)
    mask[1] = 0
    prune.custom_from_mask(conv, "weight", mask)
    model.eval()
    folded_weight, _ = conv.folded_weight_and_bias()
    assert fake_quantize_weight(folded_weight, 4)[1].eq(0).all()
    assert torch.isfinite(model(torch.randn(2, 1, 6, 6))).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_bits": 3}, "weight_bits must be one of 2, 4, 8; got 3"),
        ({"weight_bits": True}, "weight_bits must be one of 2, 4, 8; got True"),
        ({"activation_bits": 4}, "activation_bits must be one of 8; got 4"),
        ({"observer_momentum": 0.0}, "observer_momentum must be in (0, 1]; got 0.0"),
    ],
)
def test_invalid_qat_config_raises_a_one_line_config_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        QATConfig(**kwargs)
    assert str(error.value) == message


def test_module_examples_run() -> None:
    for name in ("fake_quant", "qat"):
        module = importlib.import_module(f"stamen.compression.{name}")
        result = doctest.testmod(module)
        assert result.attempted > 0, name
        assert result.failed == 0, name
