"""Several devices' quantization-aware (and pruned) LeNets trained as one.

:class:`StackedQATLeNet` is :class:`~stamen.models.StackedLeNet` with what
``prepare_qat`` and ``apply_masks`` add to each layer, computed for all devices at once and
per device exactly as the layers compute it alone:

- the weight is ``weight_orig * mask`` when pruned (SGD updates ``weight_orig``), then
  fake-quantized per output channel: the stacked output channels are each device's own;
- the layer input is fake-quantized per tensor *per device*, over a range each device's
  own observer tracks (first batch, then a moving average), with torch's per-channel
  fake-quantize op along the device axis.

Results match one-device-at-a-time QAT to float rounding: rarely, a value on a rounding
boundary of the grid lands on the other side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from stamen.compression.fake_quant import (
    ActivationFakeQuantizer,
    affine_qparams,
    fake_quantize_weight,
)
from stamen.compression.qat import QATConv2d, QATLinear
from stamen.models import LeNet, StackedLeNet


class StackedQATLeNet(StackedLeNet):
    """K LeNets prepared by ``prepare_qat`` with one weight precision, pruned or not."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        layers = [[getattr(m, name) for m in models] for name in self.layer_names]
        self.weight_bits = layers[0][0].weight_bits
        self.masks = [_stacked_mask(group) for group in layers]
        self.observers = [
            _StackedObserver([layer.input_quantizer for layer in group]) for group in layers
        ]

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """A LeNet whose four layers are exactly ``QATConv2d``/``QATLinear``, with biases."""
        if type(model) is not LeNet:
            return False
        layers = [getattr(model, name) for name in cls.layer_names]
        kinds: tuple[type[nn.Module], ...] = (QATConv2d, QATConv2d, QATLinear, QATLinear)
        exact = all(type(layer) is kind for layer, kind in zip(layers, kinds, strict=True))
        biased = all(getattr(layer, "bias", None) is not None for layer in layers)
        bits = {getattr(layer, "weight_bits", None) for layer in layers}
        return exact and biased and len(bits) == 1

    def trained_weight(self, layer: nn.Module) -> torch.Tensor:
        """``weight_orig`` of a pruned layer, else ``weight``."""
        if prune.is_pruned(layer):
            weight = layer.weight_orig
            if isinstance(weight, torch.Tensor):
                return weight
        return super().trained_weight(layer)

    def layer_weight(self, index: int) -> torch.Tensor:
        """The masked, fake-quantized weight, as ``QATConv2d``/``QATLinear`` compute it."""
        weight = self.effective_weight(index)
        if weight.dim() == 4:
            quantized = fake_quantize_weight(weight, self.weight_bits)
            return quantized.to(memory_format=torch.channels_last)
        count, out_features, in_features = weight.shape
        flat = weight.reshape(count * out_features, in_features)
        return fake_quantize_weight(flat, self.weight_bits).view(weight.shape)

    def effective_weight(self, index: int) -> torch.Tensor:
        """The pruned weight, ``weight_orig * mask``, as ``remove_masks`` leaves it."""
        mask = self.masks[index]
        return self.weights[index] if mask is None else self.weights[index] * mask

    def layer_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The input fake-quantized per device, over each device's observed range."""
        if x.dim() == 4:  # (B, K*C, H, W): device k owns channels k*C .. (k+1)*C - 1
            return self.observers[index](x, axis=1, groups=self.count)
        return self.observers[index](x, axis=0, groups=self.count)  # (K, B, F)

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each device's trained weights and observed input ranges into its model."""
        super().write_back(models)
        for index, name in enumerate(self.layer_names):
            self.observers[index].write_back([getattr(m, name).input_quantizer for m in models])


class _StackedObserver:
    """K devices' ``ActivationFakeQuantizer`` state for one layer, applied along a device axis."""

    def __init__(self, quantizers: Sequence[ActivationFakeQuantizer]) -> None:
        first = quantizers[0]
        self.quant_min, self.quant_max, self.momentum = (
            first.quant_min,
            first.quant_max,
            first.momentum,
        )
        self.running_min = torch.stack([q.running_min.detach().clone() for q in quantizers])
        self.running_max = torch.stack([q.running_max.detach().clone() for q in quantizers])
        self.observed = torch.stack([q.observed.detach().clone() for q in quantizers])

    def __call__(self, x: torch.Tensor, axis: int, groups: int) -> torch.Tensor:
        """Observe and fake-quantize ``x``, whose ``axis`` holds ``groups`` equal slices, one
        per device (several channels each for a conv input)."""
        with torch.no_grad():
            low, high = _extrema_along(x.detach().float(), axis)
            low = low.view(groups, -1).amin(dim=1)
            high = high.view(groups, -1).amax(dim=1)
            self.running_min = torch.where(
                self.observed, torch.lerp(self.running_min, low, self.momentum), low
            )
            self.running_max = torch.where(
                self.observed, torch.lerp(self.running_max, high, self.momentum), high
            )
            self.observed = torch.ones_like(self.observed)
            scale, zero_point = affine_qparams(
                self.running_min, self.running_max, self.quant_min, self.quant_max
            )
            per_slice = x.shape[axis] // groups
            scale = scale.repeat_interleave(per_slice)
            zero_point = zero_point.repeat_interleave(per_slice)
        return torch.fake_quantize_per_channel_affine(
            x, scale, zero_point, axis, self.quant_min, self.quant_max
        )

    def write_back(self, quantizers: Sequence[ActivationFakeQuantizer]) -> None:
        for k, quantizer in enumerate(quantizers):
            quantizer.running_min.copy_(self.running_min[k])
            quantizer.running_max.copy_(self.running_max[k])
            quantizer.observed.copy_(self.observed[k])


def _extrema_along(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each index of ``axis`` over all other dimensions."""
    if axis == 0 or not x.is_contiguous(memory_format=torch.channels_last):
        other = tuple(d for d in range(x.dim()) if d != axis)
        return x.amin(dim=other), x.amax(dim=other)
    # Channels-last: a (pixels, channels) matrix. CPU reductions down narrow columns are slow,
    # so fold rows side by side until the matrix is 64 wide; each channel then repeats.
    channels = x.shape[1]
    columns = x.movedim(1, -1).reshape(-1, channels)
    fold = 1
    while channels * fold * 2 <= 64 and columns.shape[0] % (fold * 2) == 0:
        fold *= 2
    wide = columns.reshape(-1, channels * fold)
    low = wide.amin(dim=0).view(fold, channels).amin(dim=0)
    high = wide.amax(dim=0).view(fold, channels).amax(dim=0)
    return low, high


def _stacked_mask(layers: Sequence[nn.Module]) -> torch.Tensor | None:
    """The layers' pruning masks in the stacked weight layout; ``None`` if none is pruned."""
    masks = [getattr(layer, "weight_mask", None) for layer in layers]
    if all(mask is None for mask in masks):
        return None
    full = [
        mask if isinstance(mask, torch.Tensor) else torch.ones_like(_weight(layer))
        for mask, layer in zip(masks, layers, strict=True)
    ]
    if full[0].dim() == 4:
        return torch.cat(full).contiguous().to(memory_format=torch.channels_last)
    return torch.stack(full)


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__} has no weight tensor")
    return weight
