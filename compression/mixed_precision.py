"""Mixed precision by measured sensitivity: 8, 4 or 2 weight bits per layer, under a byte budget.

``measure_sensitivity`` quantizes one layer's weight at a time with Stamen's fake-quant op
(symmetric, per output channel) and measures how much the loss on calibration data rises:
cross-entropy when labels are given, otherwise the KL divergence from the float model's own
predictions (no labels needed). ``allocate_bits`` starts every layer at 8 bits and, while the
model is over budget, lowers the layer whose next step down costs the least loss per byte
saved: a greedy solution of the knapsack in the spirit of HAWQ-V3 (Yao et al., 2021), with
measured rather than Hessian-estimated sensitivities. Sensitivities are assumed to add up
across layers, which holds for small perturbations.

Examples:
    >>> layers = [LayerInfo("a", 1000, 10, 10), LayerInfo("b", 1000, 10, 10)]
    >>> sensitivity = {"a": {8: 0.0, 4: 0.5, 2: 2.0}, "b": {8: 0.0, 4: 0.01, 2: 0.1}}
    >>> plan = allocate_bits(layers, sensitivity, budget_bytes=1500)
    >>> plan.bits, plan.total_bytes <= 1500
    ({'a': 8, 'b': 2}, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from stamen.compression.fake_quant import WEIGHT_BITS, fake_quantize_weight
from stamen.compression.qat import QAT_MODULE_TYPES, QATConfig, prepare_qat
from stamen.core.errors import ConfigError

BITS_DESCENDING = tuple(sorted(WEIGHT_BITS, reverse=True))
_SCALE_BYTES = 4  # one float32 scale per output channel
_BIAS_BYTES = 4  # int32 or float32 bias


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: its module path and what its weights cost."""

    name: str
    weights: int
    out_channels: int
    bias: int

    def nbytes(self, bits: int) -> int:
        """Stored bytes at ``bits`` per weight: packed weights, per-channel scales, bias."""
        return (
            -(-self.weights * bits // 8)
            + self.out_channels * _SCALE_BYTES
            + self.bias * (_BIAS_BYTES)
        )


@dataclass(frozen=True)
class PrecisionPlan:
    """Bits per layer and what they cost."""

    bits: dict[str, int]
    layer_bytes: dict[str, int]
    sensitivity: dict[str, float]
    """The measured loss increase of each layer at its planned bits."""
    total_bytes: int
    budget_bytes: int

    @property
    def predicted_loss_increase(self) -> float:
        """The sum of the layers' loss increases (the additive estimate)."""
        return sum(self.sensitivity.values())


def quantizable_layers(model: nn.Module) -> list[tuple[LayerInfo, nn.Conv2d | nn.Linear]]:
    """Every ``Conv2d`` and ``Linear`` (QAT layers included), in model order.

    Examples:
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> [(info.name, info.weights, info.nbytes(8)) for info, _ in quantizable_layers(model)]
        [('0', 36, 68), ('2', 1440, 1520)]
    """
    layers: list[tuple[LayerInfo, nn.Conv2d | nn.Linear]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            weight = module.weight
            bias = 0 if module.bias is None else module.bias.numel()
            layers.append((LayerInfo(name, weight.numel(), weight.shape[0], bias), module))
    return layers


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    bits: Sequence[int] = BITS_DESCENDING,
) -> dict[str, dict[int, float]]:
    """The loss increase when only one layer's weight is fake-quantized, per layer and bits.

    The model is evaluated in eval mode and left unchanged.
    """
    was_training = model.training
    model.eval()
    reference = model(x)
    base = _loss(reference, reference, y)
    result: dict[str, dict[int, float]] = {}
    for info, module in quantizable_layers(model):
        original = module.weight.detach().clone()
        result[info.name] = {}
        for width in bits:
            module.weight.copy_(fake_quantize_weight(original, width))
            result[info.name][width] = max(0.0, _loss(model(x), reference, y) - base)
        module.weight.copy_(original)
    model.train(was_training)
    return result


def _loss(logits: torch.Tensor, reference: torch.Tensor, y: torch.Tensor | None) -> float:
    if y is not None:
        return float(F.cross_entropy(logits, y))
    return float(
        F.kl_div(
            F.log_softmax(logits, dim=1),
            F.log_softmax(reference, dim=1),
            reduction="batchmean",
            log_target=True,
        )
    )


def allocate_bits(
    layers: Sequence[LayerInfo],
    sensitivity: Mapping[str, Mapping[int, float]],
    budget_bytes: int,
) -> PrecisionPlan:
    """Choose bits per layer so the model fits ``budget_bytes`` at the least measured loss.

    Raises:
        ConfigError: Even every layer at 2 bits exceeds the budget.
    """
    bits = {layer.name: BITS_DESCENDING[0] for layer in layers}
    by_name = {layer.name: layer for layer in layers}
    smallest = sum(layer.nbytes(BITS_DESCENDING[-1]) for layer in layers)
    if smallest > budget_bytes:
        raise ConfigError(
            f"bits budget {budget_bytes} bytes is below the smallest plan, {smallest} bytes "
            "(every layer at 2 bits)"
        )

    def total() -> int:
        return sum(by_name[name].nbytes(b) for name, b in bits.items())

    while total() > budget_bytes:
        best: tuple[float, str, int] | None = None
        for name, current in bits.items():
            lower = _next_lower(current)
            if lower is None:
                continue
            layer = by_name[name]
            saved = layer.nbytes(current) - layer.nbytes(lower)
            cost = sensitivity[name][lower] - sensitivity[name][current]
            score = max(cost, 0.0) / max(saved, 1)
            if best is None or score < best[0]:
                best = (score, name, lower)
        assert best is not None  # the budget check above guarantees a step remains
        bits[best[1]] = best[2]
    _spend_leftover(bits, by_name, sensitivity, budget_bytes - total())
    return PrecisionPlan(
        bits=bits,
        layer_bytes={name: by_name[name].nbytes(b) for name, b in bits.items()},
        sensitivity={name: float(sensitivity[name][b]) for name, b in bits.items()},
        total_bytes=total(),
        budget_bytes=budget_bytes,
    )


def _spend_leftover(
    bits: dict[str, int],
    by_name: Mapping[str, LayerInfo],
    sensitivity: Mapping[str, Mapping[int, float]],
    leftover: int,
) -> None:
    # A late, large demotion can free more bytes than needed: raise the layers whose step up
    # buys the most loss per byte, while they still fit.
    while True:
        best: tuple[float, str, int, int] | None = None
        for name, current in bits.items():
            index = BITS_DESCENDING.index(current)
            if index == 0:
                continue
            higher = BITS_DESCENDING[index - 1]
            layer = by_name[name]
            extra = layer.nbytes(higher) - layer.nbytes(current)
            gain = sensitivity[name][current] - sensitivity[name][higher]
            if extra <= leftover and gain > 0 and (best is None or gain / extra > best[0]):
                best = (gain / extra, name, higher, extra)
        if best is None:
            return
        bits[best[1]] = best[2]
        leftover -= best[3]


def _next_lower(bits: int) -> int | None:
    index = BITS_DESCENDING.index(bits)
    return BITS_DESCENDING[index + 1] if index + 1 < len(BITS_DESCENDING) else None


def plan_precision(
    model: nn.Module, x: torch.Tensor, budget_bytes: int, y: torch.Tensor | None = None
) -> PrecisionPlan:
    """Measure ``model``'s sensitivities on ``x`` (and ``y``) and allocate bits to the budget.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> plan = plan_precision(model, torch.randn(64, 16), budget_bytes=500)
        >>> sorted(plan.bits), plan.total_bytes <= 500
        (['0', '2'], True)
    """
    layers = [info for info, _ in quantizable_layers(model)]
    return allocate_bits(layers, measure_sensitivity(model, x, y), budget_bytes)


def apply_plan(model: nn.Module, plan: PrecisionPlan, config: QATConfig | None = None) -> None:
    """Prepare ``model`` for QAT in place, each layer at its planned weight bits.

    Examples:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> plan = PrecisionPlan({"0": 4, "2": 8}, {}, {}, total_bytes=0, budget_bytes=0)
        >>> apply_plan(model, plan)
        >>> model[0].weight_bits, model[2].weight_bits
        (4, 8)
    """
    prepare_qat(model, config or QATConfig())
    modules = dict(model.named_modules())
    for name, bits in plan.bits.items():
        module = modules[name]
        if not isinstance(module, QAT_MODULE_TYPES):
            raise ValueError(f"layer {name!r} of the plan is not a QAT layer of this model")
        module.weight_bits = bits
