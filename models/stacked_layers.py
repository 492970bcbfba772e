"""Stacked forms of float layers and of the functions models call (the stacking rules).

- ``Conv2d``: one grouped convolution, ``groups`` times K, over ``(B, K*C, H, W)``
  channels-last; the weights stacked ``(K*out, in/groups, kh, kw)``.
- ``Linear``: one batched matmul over ``(K, B, F)``; the weights stacked ``(K, out, in)``.
- ``BatchNorm2d``: one BatchNorm over ``K*C`` channels, so each device normalises by its own
  batch statistics and keeps its own running statistics.
- parameterless layers (ReLU, pooling, ``Flatten``) as their functions.
- functions (``F.relu``, pooling, ``torch.flatten``, ``x + y``): by what each does to a
  layout (elementwise, per channel, flattening, arithmetic).

A weight pruned with ``torch.nn.utils.prune`` trains ``weight_orig`` and computes with
``weight_orig * weight_mask``, as the pruned layer does; no other hook stacks.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from stamen.models.stacking import (
    FUNCTION_RULES,
    LAYER_RULES,
    Activation,
    Layout,
    NotStackable,
    StackContext,
    StackedLayer,
    StackedTensor,
    leaf,
    tensor_of,
)


def trained_weight(layer: nn.Module) -> torch.Tensor:
    """The tensor of ``layer`` that SGD updates: ``weight_orig`` when pruned, else ``weight``."""
    return tensor_of(layer, "weight_orig" if prune.is_pruned(layer) else "weight")


def _check_hooks(layer: nn.Module) -> None:
    pre_hooks = list(layer._forward_pre_hooks.values())
    if layer._forward_hooks or not all(isinstance(h, prune.BasePruningMethod) for h in pre_hooks):
        raise NotStackable(f"{type(layer).__name__} carries hooks other than a pruning mask")


class _Weighted(StackedLayer):
    """A layer with a (possibly pruned) weight and an optional bias, stacked device-major."""

    def __init__(self, layers: Sequence[nn.Module], name: str, context: StackContext) -> None:
        super().__init__(layers, name, context)
        for layer in layers:
            _check_hooks(layer)
        first = layers[0]
        self.weight_shape = tuple(tensor_of(first, "weight").shape)
        self.weight = leaf(self._shaped(context.stack([trained_weight(m) for m in layers])))
        masks = [getattr(m, "weight_mask", None) for m in layers]
        self.mask: torch.Tensor | None = None
        if any(isinstance(mask, torch.Tensor) for mask in masks):
            full = [
                mask if isinstance(mask, torch.Tensor) else torch.ones_like(trained_weight(m))
                for mask, m in zip(masks, layers, strict=True)
            ]
            self.mask = self._shaped(context.stack(full))
        self.bias: torch.Tensor | None = None
        if isinstance(first.bias, torch.Tensor):
            biases = [tensor_of(m, "bias") for m in layers]
            self.bias = leaf(self._shaped_bias(context.stack(biases)))

    def _shaped(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked

    def _shaped_bias(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked

    def effective_weight(self) -> torch.Tensor:
        """The weight as the device's model exchanges it: ``weight_orig * mask`` if pruned."""
        return self.weight if self.mask is None else self.weight * self.mask

    def layer_weight(self) -> torch.Tensor:
        """The weight the layer computes with (QAT's rules fake-quantize it)."""
        return self.effective_weight()

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the layer sees it (QAT's rules fake-quantize it)."""
        return x

    def trained(self) -> list[torch.Tensor]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def exchanged(self) -> list[StackedTensor]:
        tensors = [StackedTensor(f"{self.name}.weight", self.effective_weight(), self.weight_shape)]
        if self.bias is not None:
            tensors.append(StackedTensor(f"{self.name}.bias", self.bias, (self.weight_shape[0],)))
        return tensors


class StackedConv2d(_Weighted):
    """K devices' ``Conv2d`` as one grouped convolution over ``(B, K*C, H, W)``."""

    def __init__(self, layers: Sequence[nn.Module], name: str, context: StackContext) -> None:
        conv = layers[0]
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            raise NotStackable(f"{name}: only zero-padded convolutions stack")
        super().__init__(layers, name, context)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups * self.count

    def _shaped(self, stacked: torch.Tensor) -> torch.Tensor:
        # Channels-last, explicitly: ``contiguous()`` leaves a 1-input-channel weight
        # NCHW-strided, and oneDNN then converts formats on every call.
        return stacked.to(memory_format=torch.channels_last)

    def __call__(self, x: Activation) -> Activation:
        if x.layout is not Layout.CHANNELS:
            raise NotStackable(f"{self.name}: a convolution of a feature vector")
        weight = self.layer_weight().to(memory_format=torch.channels_last)
        y = F.conv2d(
            self.layer_input(x.tensor),
            weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return x.like(y)


class StackedLinear(_Weighted):
    """K devices' ``Linear`` as one batched matmul over ``(K, B, F)``."""

    def _shaped(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.view(self.count, -1, stacked.shape[-1])

    def _shaped_bias(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.view(self.count, 1, -1)

    def __call__(self, x: Activation) -> Activation:
        if x.layout is not Layout.DEVICES or x.tensor.dim() != 3:
            raise NotStackable(f"{self.name}: a linear layer of a non-vector input")
        h = self.layer_input(x.tensor)
        weight = self.layer_weight().transpose(1, 2)
        y = torch.bmm(h, weight) if self.bias is None else torch.baddbmm(self.bias, h, weight)
        return x.like(y)


class StackedBatchNorm2d(StackedLayer):
    """K devices' ``BatchNorm2d`` as one over ``K*C`` channels: per-device statistics."""

    batch_coupled = True

    def __init__(self, layers: Sequence[nn.Module], name: str, context: StackContext) -> None:
        super().__init__(layers, name, context)
        norm = layers[0]
        if not isinstance(norm, nn.BatchNorm2d):
            raise NotStackable(f"{name} is not a BatchNorm2d")
        self.channels, self.eps, self.momentum = norm.num_features, norm.eps, norm.momentum
        counts = {int(getattr(m, "num_batches_tracked", 0) or 0) for m in layers}
        if len(counts) != 1:
            raise NotStackable(f"{name}: the devices have seen different numbers of batches")
        self.batches_tracked = counts.pop()
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        if norm.affine:
            self.weight = leaf(context.stack([tensor_of(m, "weight") for m in layers]))
            self.bias = leaf(context.stack([tensor_of(m, "bias") for m in layers]))
        self.running_mean: torch.Tensor | None = None
        self.running_var: torch.Tensor | None = None
        if norm.track_running_stats:
            self.running_mean = context.stack([tensor_of(m, "running_mean") for m in layers])
            self.running_var = context.stack([tensor_of(m, "running_var") for m in layers])

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """``BatchNorm2d.forward`` in training mode, for every device's channels at once."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.running_mean is not None:
            self.batches_tracked += 1
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / self.batches_tracked
        return F.batch_norm(
            y, self.running_mean, self.running_var, self.weight, self.bias, True, factor, self.eps
        )

    def __call__(self, x: Activation) -> Activation:
        if x.layout is not Layout.CHANNELS:
            raise NotStackable(f"{self.name}: a BatchNorm2d of a feature vector")
        return x.like(self.normalize(x.tensor))

    def trained(self) -> list[torch.Tensor]:
        return [] if self.weight is None or self.bias is None else [self.weight, self.bias]

    def exchanged(self) -> list[StackedTensor]:
        shape = (self.channels,)
        named = (
            ("weight", self.weight),
            ("bias", self.bias),
            ("running_mean", self.running_mean),
            ("running_var", self.running_var),
        )
        return [StackedTensor(f"{self.name}.{n}", t, shape) for n, t in named if t is not None]


class StackedFunction(StackedLayer):
    """A parameterless layer (ReLU, pooling, ``Flatten``), applied as its function."""

    def __init__(self, layers: Sequence[nn.Module], name: str, context: StackContext) -> None:
        super().__init__(layers, name, context)
        self.module = layers[0]
        if any(True for _ in self.module.parameters()) or any(True for _ in self.module.buffers()):
            raise NotStackable(f"{name}: {type(self.module).__name__} holds tensors")

    def __call__(self, x: Activation) -> Activation:
        module = self.module
        if isinstance(module, nn.Flatten):
            return FUNCTION_RULES["flatten"]("flatten", x, module.start_dim, module.end_dim)
        if isinstance(module, _PER_CHANNEL) and x.layout is not Layout.CHANNELS:
            raise NotStackable(f"{self.name}: {type(module).__name__} of a feature vector")
        return x.like(module(x.tensor))


_PER_CHANNEL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity)

LAYER_RULES.update({nn.Conv2d: StackedConv2d, nn.Linear: StackedLinear})
LAYER_RULES[nn.BatchNorm2d] = StackedBatchNorm2d
LAYER_RULES.update(dict.fromkeys((*_PER_CHANNEL, *_ELEMENTWISE, nn.Flatten), StackedFunction))

__all__ = ["StackedBatchNorm2d", "StackedConv2d", "StackedFunction", "StackedLinear"]

# -- the functions a traced model calls (``F.relu``, ``torch.flatten``, ``x + y``) --------------


def to_features(x: Activation) -> Activation:
    """Per device, ``torch.flatten(x, 1)`` of its own activations: ``(K, B, F)``."""
    if x.layout is Layout.DEVICES:
        return x.like(x.tensor.flatten(2))
    batch = x.tensor.shape[0]
    features = x.tensor.reshape(batch, x.count, -1).transpose(0, 1)
    return Activation(features, Layout.DEVICES, x.count)


def _function(target: Any) -> Callable[..., torch.Tensor]:
    return getattr(torch.Tensor, target) if isinstance(target, str) else target


def _elementwise(target: Any, x: Activation, *args: Any, **kwargs: Any) -> Activation:
    """A function of each element alone (ReLU): the same in any layout."""
    return x.like(_function(target)(x.tensor, *args, **kwargs))


def _per_channel(target: Any, x: Activation, *args: Any, **kwargs: Any) -> Activation:
    """A function of each image channel alone (pooling): the same on ``(B, K*C, H, W)``."""
    if x.layout is not Layout.CHANNELS:
        raise NotStackable(f"{getattr(target, '__name__', target)} of a feature vector")
    return x.like(_function(target)(x.tensor, *args, **kwargs))


def _flatten(target: Any, x: Activation, start_dim: int = 1, end_dim: int = -1) -> Activation:
    if start_dim != 1 or end_dim != -1:
        raise NotStackable("only flatten(x, 1) stacks")
    return to_features(x)


def _arithmetic(target: Any, x: Any, y: Any) -> Activation:
    """``x + y``, ``x * y`` and the like, with a number or a value of the same layout."""
    if isinstance(x, Activation) and isinstance(y, Activation):
        if x.layout is not y.layout:
            raise NotStackable("arithmetic between values of different layouts")
        return x.like(target(x.tensor, y.tensor))
    if isinstance(x, Activation) and isinstance(y, int | float):
        return x.like(target(x.tensor, y))
    if isinstance(y, Activation) and isinstance(x, int | float):
        return y.like(target(x, y.tensor))
    raise NotStackable(f"{getattr(target, '__name__', target)} of these operands")


FUNCTION_RULES.update(
    dict.fromkeys(
        (F.relu, torch.relu, F.relu6, F.leaky_relu, torch.sigmoid, torch.tanh, "relu", "sigmoid"),
        _elementwise,
    )
)
FUNCTION_RULES.update(
    dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d), _per_channel)
)
FUNCTION_RULES.update(dict.fromkeys((torch.flatten, "flatten"), _flatten))
FUNCTION_RULES.update(
    dict.fromkeys((operator.add, operator.mul, operator.sub, operator.truediv), _arithmetic)
)
