"""The sensitivity-driven bit allocator: budgets are respected, sensitive layers keep bits."""

import pytest
import torch
from torch.nn import functional as F

from stamen.compression import LayerInfo, apply_plan, plan_precision, quantizable_layers
from stamen.compression.mixed_precision import allocate_bits, measure_sensitivity
from stamen.compression.qat import QATConv2d, QATLinear
from stamen.core.errors import ConfigError
from stamen.data import load_dataset
from stamen.models import ModelSpec, build_model


@pytest.fixture(scope="module")
def trained_lenet() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train), torch.tensor(data.y_train)
    model = build_model(ModelSpec("lenet", data.input_shape, data.num_classes), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), x[:400], y[:400]


def test_sensitivity_is_measured_per_layer_and_bits_and_leaves_the_model_alone(
    trained_lenet: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained_lenet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitivity = measure_sensitivity(model, x)
    assert list(sensitivity) == ["conv1", "conv2", "fc1", "classifier"]
    for values in sensitivity.values():
        assert set(values) == {8, 4, 2}
        assert values[2] >= values[8] >= 0.0
    total = {bits: sum(v[bits] for v in sensitivity.values()) for bits in (8, 4, 2)}
    assert total[2] > total[4] > total[8]
    with_labels = measure_sensitivity(model, x, y)
    assert with_labels.keys() == sensitivity.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fraction", [0.35, 0.45, 0.6, 0.8, 1.0])
def test_plan_respects_every_budget(
    trained_lenet: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], fraction: float
) -> None:
    model, x, _ = trained_lenet
    layers = [info for info, _ in quantizable_layers(model)]
    full = sum(layer.nbytes(8) for layer in layers)
    budget = int(full * fraction)
    plan = plan_precision(model, x, budget)
    assert plan.total_bytes <= budget
    assert plan.total_bytes == sum(plan.layer_bytes.values())
    assert set(plan.bits.values()) <= {2, 4, 8}
    if fraction == 1.0:
        assert set(plan.bits.values()) == {8}


def test_more_sensitive_layers_get_more_bits() -> None:
    # Four layers of the same size; sensitivity rises from a to d at every precision.
    layers = [LayerInfo(name, 1000, 10, 10) for name in "abcd"]
    sensitivity = {
        name: {8: 0.0, 4: 0.01 * scale, 2: 0.1 * scale}
        for name, scale in zip("abcd", (1, 3, 10, 30), strict=True)
    }
    for budget in range(1500, 4400, 250):
        plan = allocate_bits(layers, sensitivity, budget)
        bits = [plan.bits[name] for name in "abcd"]
        assert bits == sorted(bits), (budget, bits)
        assert plan.total_bytes <= budget


def test_impossible_budget_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="below the smallest plan, 330 bytes"):
        allocate_bits([LayerInfo("a", 1000, 10, 10)], {"a": {8: 0, 4: 0, 2: 0}}, 100)


def test_apply_plan_sets_each_layers_bits(
    trained_lenet: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, _ = trained_lenet
    plan = plan_precision(model, x, 6000)
    copy = build_model(ModelSpec("lenet", (1, 8, 8), 10))
    copy.load_state_dict(model.state_dict())
    apply_plan(copy, plan)
    modules = dict(copy.named_modules())
    for name, bits in plan.bits.items():
        assert isinstance(modules[name], QATConv2d | QATLinear)
        assert modules[name].weight_bits == bits
