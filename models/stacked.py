"""Several devices' LeNets as one: stacked weights, grouped convolutions, batched matmuls.

A W1 device update is a few hundred small kernels, and on a CPU their fixed costs weigh as
much as their arithmetic. Stacking K devices' weights turns each layer into one grouped
channels-last convolution (``groups=K``) or one batched matmul that computes every device's
layer from its own weights and inputs only, so each device's maths is its LeNet's. Training
this way costs about a quarter less per device on one CPU thread than one device at a time
(docs/simulation.md). Results match one-at-a-time training to float rounding, not bit for
bit: the kernels sum in a different order.

Only plain float LeNets stack (see :func:`stackable`); QAT, pruning masks and other
architectures train one device at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stamen.models.architectures import LeNet

_LAYERS = ("conv1", "conv2", "fc1", "classifier")


def stackable(model: nn.Module) -> bool:
    """Whether ``model`` is a plain float LeNet that :class:`StackedLeNet` can train."""
    if type(model) is not LeNet:
        return False
    layers = [getattr(model, name) for name in _LAYERS]
    return all(
        type(layer) in (nn.Conv2d, nn.Linear)  # not a QAT subclass
        and not layer._forward_pre_hooks  # no pruning mask
        and layer.bias is not None
        for layer in layers
    )


class StackedLeNet:
    """K LeNets of one shape as stacked leaf tensors, with their joint forward pass.

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

    def __init__(self, models: Sequence[LeNet]) -> None:
        if not models or not all(stackable(model) for model in models):
            raise ValueError("StackedLeNet needs one or more plain float LeNets")
        first = models[0]
        self.count = len(models)
        self.padding = first.conv1.padding
        with torch.no_grad():
            self.conv1_weight = _stack([m.conv1.weight for m in models], conv=True)
            self.conv1_bias = _stack([_bias(m.conv1) for m in models], conv=True)
            self.conv2_weight = _stack([m.conv2.weight for m in models], conv=True)
            self.conv2_bias = _stack([_bias(m.conv2) for m in models], conv=True)
            self.fc1_weight = _stack([m.fc1.weight.t() for m in models])
            self.fc1_bias = _stack([m.fc1.bias.unsqueeze(0) for m in models])
            self.out_weight = _stack([m.classifier.weight.t() for m in models])
            self.out_bias = _stack([m.classifier.bias.unsqueeze(0) for m in models])

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaf tensors, for an optimizer: per-device SGD is elementwise."""
        return [
            self.conv1_weight,
            self.conv1_bias,
            self.conv2_weight,
            self.conv2_bias,
            self.fc1_weight,
            self.fc1_bias,
            self.out_weight,
            self.out_bias,
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of inputs ``(K, B, C, H, W)``, device ``k`` on model ``k``."""
        count, batch = x.shape[0], x.shape[1]
        h = x.transpose(0, 1).reshape(batch, count * x.shape[2], *x.shape[3:])
        h = h.to(memory_format=torch.channels_last)
        h = F.conv2d(h, self.conv1_weight, self.conv1_bias, padding=self.padding, groups=count)
        h = F.max_pool2d(F.relu(h), 2)
        h = F.conv2d(h, self.conv2_weight, self.conv2_bias, padding=self.padding, groups=count)
        h = F.max_pool2d(F.relu(h), 2)
        # Per device, the channel-major flatten of LeNet's torch.flatten(x, 1).
        h = h.reshape(batch, count, -1).transpose(0, 1)
        h = F.relu(torch.baddbmm(self.fc1_bias, h, self.fc1_weight))
        return torch.baddbmm(self.out_bias, h, self.out_weight)

    @torch.no_grad()
    def write_back(self, models: Sequence[LeNet]) -> None:
        """Copy each device's trained weights into its own model."""
        per_device = {
            "conv1.weight": self.conv1_weight.reshape(self.count, -1),
            "conv1.bias": self.conv1_bias.reshape(self.count, -1),
            "conv2.weight": self.conv2_weight.reshape(self.count, -1),
            "conv2.bias": self.conv2_bias.reshape(self.count, -1),
        }
        for k, model in enumerate(models):
            for name in ("conv1", "conv2"):
                layer = getattr(model, name)
                layer.weight.copy_(per_device[f"{name}.weight"][k].view_as(layer.weight))
                layer.bias.copy_(per_device[f"{name}.bias"][k])
            model.fc1.weight.copy_(self.fc1_weight[k].t())
            model.fc1.bias.copy_(self.fc1_bias[k, 0])
            model.classifier.weight.copy_(self.out_weight[k].t())
            model.classifier.bias.copy_(self.out_bias[k, 0])


def _stack(tensors: Sequence[torch.Tensor], *, conv: bool = False) -> torch.Tensor:
    if conv:
        # Device k's output channels are k*C_out .. (k+1)*C_out - 1 of the grouped conv.
        stacked = torch.cat([t.detach() for t in tensors])
        if stacked.dim() == 4:
            stacked = stacked.contiguous(memory_format=torch.contiguous_format).to(
                memory_format=torch.channels_last
            )
        else:
            stacked = stacked.clone()
    else:
        stacked = torch.stack([t.detach() for t in tensors]).contiguous()
    return stacked.requires_grad_(True)


def _bias(layer: nn.Conv2d) -> torch.Tensor:
    if layer.bias is None:  # stackable() rules this out
        raise ValueError("StackedLeNet needs convolutions with a bias")
    return layer.bias
