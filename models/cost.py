"""How much arithmetic one training sample costs a model.

The simulated clock turns this into seconds on each device tier. Only
convolutions and linear layers are counted: they are nearly all of the work.

Examples:
    >>> from stamen.models import ModelSpec, build_model
    >>> spec = ModelSpec(name="lenet", input_shape=(1, 28, 28), num_classes=10)
    >>> forward_macs(build_model(spec), spec.input_shape)
    337024
    >>> training_flops_per_sample(build_model(spec), spec.input_shape)
    2022144.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def forward_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample."""
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def training_flops_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step per sample: forward plus a backward twice as dear.

    Examples:
        >>> training_flops_per_sample(nn.Linear(100, 10), (100,))  # 1,000 MACs forward
        6000.0
    """
    return 3.0 * 2.0 * forward_macs(model, input_shape)
