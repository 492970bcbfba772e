"""Several devices' LeNets as one: stacked weights, grouped convolutions, batched matmuls.

A W1 device update is a few hundred small kernels, and on a CPU their fixed costs weigh as
much as their arithmetic. Stacking K devices' weights turns each layer into one grouped
channels-last convolution (``groups=K``) or one batched matmul that computes every device's
layer from its own weights and inputs only, so each device's maths is its LeNet's. Training
this way costs about a quarter less per device on one CPU thread than one device at a time
(docs/simulation.md). Results match one-at-a-time training to float rounding, not bit for
bit: the kernels sum in a different order.

Plain float LeNets stack here (see :func:`stackable`);
:class:`stamen.compression.StackedQATLeNet` adds QAT and pruning masks. Other
architectures train one device at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stamen.models.architectures import LeNet

_CONVS = ("conv1", "conv2")
LENET_LAYERS = (*_CONVS, "fc1", "classifier")
"""LeNet's weighted layers, in the order a :class:`StackedLeNet` keeps them."""


def stackable(model: nn.Module) -> bool:
    """Whether ``model`` is a plain float LeNet that :class:`StackedLeNet` can train."""
    if type(model) is not LeNet:
        return False
    layers = [getattr(model, name) for name in LENET_LAYERS]
    return all(
        type(layer) in (nn.Conv2d, nn.Linear)  # not a QAT subclass
        and not layer._forward_pre_hooks  # no pruning mask
        and layer.bias is not None
        for layer in layers
    )


class StackedLeNet:
    """K LeNets of one shape as stacked leaf tensors, with their joint forward pass.

    Subclasses change what a layer computes from its stacked weight and input (QAT's fake
    quantization, pruning masks) through :meth:`layer_weight` and :meth:`layer_input`.

    Args:
        models: The devices' LeNets, all built from one :class:`~stamen.models.ModelSpec`.

    Examples:
        >>> import torch
        >>> from stamen.models import ModelSpec, build_model
        >>> spec = ModelSpec("lenet", (1, 28, 28), num_classes=10)
        >>> models = [build_model(spec, seed=s) for s in range(3)]
        >>> stacked = StackedLeNet(models)
        >>> x = torch.randn(3, 5, 1, 28, 28)
        >>> together = stacked.forward(x)
        >>> alone = models[1](x[1])
        >>> together.shape, bool(torch.allclose(together[1], alone, atol=1e-5))
        (torch.Size([3, 5, 10]), True)
    """

    layer_names: ClassVar[tuple[str, ...]] = LENET_LAYERS
    """The LeNet attributes of the weighted layers, in the order :attr:`weights` keeps them."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models or not all(self.accepts(model) for model in models):
            raise ValueError(f"{type(self).__name__} cannot stack these models")
        self.count = len(models)
        conv1 = models[0].conv1
        if not isinstance(conv1, nn.Conv2d):  # accepts() rules this out
            raise TypeError("a LeNet's conv1 is a Conv2d")
        self.padding = conv1.padding
        with torch.no_grad():
            self.weights = [
                _stack([self.trained_weight(getattr(m, name)) for m in models])
                for name in LENET_LAYERS
            ]
            self.biases = [
                _stack([_bias(getattr(m, name)) for m in models], bias_of_conv=name in _CONVS)
                for name in LENET_LAYERS
            ]

    @classmethod
    def replicate(cls, model: nn.Module, count: int) -> Self:
        """``count`` devices that all start from ``model`` (a round's global model)."""
        return cls([model] * count)

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether ``model`` can be one of the stacked models."""
        return stackable(model)

    def trained_weight(self, layer: nn.Module) -> torch.Tensor:
        """The tensor of ``layer`` that SGD updates."""
        weight = layer.weight
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(layer).__name__} has no weight tensor")
        return weight

    def layer_weight(self, index: int) -> torch.Tensor:
        """The weight layer ``index`` computes with (conv: ``(K*out, in, kh, kw)``)."""
        return self.weights[index]

    def layer_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s input as the layer sees it (conv: ``(B, K*C, H, W)``)."""
        return x

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaf tensors, for an optimizer: per-device SGD is elementwise."""
        return [*self.weights, *self.biases]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of inputs ``(K, B, C, H, W)``, device ``k`` on model ``k``."""
        count, batch = x.shape[0], x.shape[1]
        h = x.transpose(0, 1).reshape(batch, count * x.shape[2], *x.shape[3:])
        h = h.to(memory_format=torch.channels_last)
        for index in range(len(_CONVS)):
            h = F.conv2d(
                self.layer_input(index, h),
                self.layer_weight(index),
                self.biases[index],
                padding=self.padding,
                groups=count,
            )
            # LeNet's relu-then-pool, as pool-then-relu: the same values and gradients (both
            # are monotone), with the ReLU on a quarter of the elements.
            h = F.relu(F.max_pool2d(h, 2))
        # Per device, the channel-major flatten of LeNet's torch.flatten(x, 1).
        h = h.reshape(batch, count, -1).transpose(0, 1)
        for index in range(len(_CONVS), len(LENET_LAYERS)):
            weight = self.layer_weight(index).transpose(1, 2)
            h = torch.baddbmm(self.biases[index], self.layer_input(index, h), weight)
            if index < len(LENET_LAYERS) - 1:
                h = F.relu(h)
        return h

    def effective_weight(self, index: int) -> torch.Tensor:
        """Layer ``index``'s weight as the device's model exchanges it (before quantization)."""
        return self.weights[index]

    @torch.no_grad()
    def device_states(self) -> list[dict[str, np.ndarray]]:
        """Each device's trained weights and biases, named and shaped as
        :func:`~stamen.models.exchanged_state` names them for its LeNet."""
        states: list[dict[str, np.ndarray]] = [{} for _ in range(self.count)]
        for index, name in enumerate(LENET_LAYERS):
            weight = self.effective_weight(index)
            shape = (self.count, weight.shape[0] // self.count, *weight.shape[1:])
            if weight.dim() == 3:  # linear layers are stacked (K, out, in) already
                shape = tuple(weight.shape)
            weights = weight.detach().reshape(shape).contiguous().numpy()
            biases = self.biases[index].detach().reshape(self.count, -1).numpy()
            for k, state in enumerate(states):
                state[f"{name}.weight"] = weights[k]
                state[f"{name}.bias"] = biases[k]
        return states

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each device's trained weights into its own model."""
        for index, name in enumerate(LENET_LAYERS):
            weights = self.weights[index].reshape(self.count, -1)
            biases = self.biases[index].reshape(self.count, -1)
            for k, model in enumerate(models):
                layer = getattr(model, name)
                target = self.trained_weight(layer)
                target.copy_(weights[k].view(target.shape))
                _bias(layer).copy_(biases[k])


def _stack(tensors: Sequence[torch.Tensor], *, bias_of_conv: bool = False) -> torch.Tensor:
    """Conv weights: device k's output channels are k*out .. (k+1)*out - 1 of one grouped
    conv, channels-last; conv biases likewise. Linear weights ``(K, out, in)``, biases
    ``(K, 1, out)``, for batched matmuls."""
    first = tensors[0]
    if first.dim() == 4:
        stacked = torch.cat([t.detach() for t in tensors]).contiguous()
        stacked = stacked.to(memory_format=torch.channels_last)
    elif bias_of_conv:
        stacked = torch.cat([t.detach() for t in tensors])
    elif first.dim() == 1:
        stacked = torch.stack([t.detach().unsqueeze(0) for t in tensors])
    else:
        stacked = torch.stack([t.detach() for t in tensors]).contiguous()
    return stacked.clone().requires_grad_(True)


def _bias(layer: nn.Module) -> torch.Tensor:
    bias = layer.bias
    if not isinstance(bias, torch.Tensor):  # stackable() rules this out
        raise ValueError("StackedLeNet needs layers with a bias")
    return bias
