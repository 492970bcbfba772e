"""Several devices' models trained as one for any float model: ``torch.func.vmap``.

:class:`~stamen.models.stacking.GroupedStack` knows layer types and is the fast path; this
is the generic one, for a model it does not know: every parameter and buffer is stacked
along a new device axis and the model's own ``forward`` runs under ``vmap`` over
``functional_call``, so device ``k`` computes with its own weights and updates its own
buffers (BatchNorm's running statistics). A model that ``vmap`` cannot run (Python that
branches on tensor values, random numbers, quantization-aware layers, hooks such as pruning
masks) raises when it is built or first called, and its devices train one at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from stamen.models.stacking import NotStackable
from stamen.models.state import exchanged_state


class VmapStack:
    """K devices' copies of one float model, run by ``vmap`` over stacked tensors.

    Args:
        models: The devices' models, all of one architecture.
        device: Where the stacked tensors live.

    Examples:
        >>> import torch
        >>> from stamen.models import ModelSpec, build_model
        >>> spec = ModelSpec("mlp", (24,), num_classes=7)
        >>> models = [build_model(spec, seed=s) for s in range(3)]
        >>> x = torch.randn(3, 5, 24)
        >>> together = VmapStack(models).forward(x)
        >>> bool(torch.allclose(together[2], models[2](x[2]), atol=1e-5))
        True
    """

    batch_coupled = True
    """A model of unknown layers may mix a batch's rows: devices need equal batches."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str = "cpu") -> None:
        if not models:
            raise NotStackable("no models to stack")
        if any(m._forward_pre_hooks or m._forward_hooks for m in models[0].modules()):
            raise NotStackable("a model with hooks (pruning masks) does not run under vmap")
        self.count = len(models)
        self.device = torch.device(device)
        # The template lends its code; its tensors are replaced on every call.
        self._template = copy.deepcopy(models[0]).to(self.device).train()
        named = [dict(m.named_parameters()) for m in models]
        self._parameters = {
            name: _stacked([p[name] for p in named], self.device).requires_grad_(True)
            for name in named[0]
        }
        buffers = [dict(m.named_buffers()) for m in models]
        self._buffers = {
            name: _stacked([b[name] for b in buffers], self.device) for name in buffers[0]
        }

        def call(
            parameters: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
        ) -> torch.Tensor:
            return functional_call(self._template, (parameters, buffers), (x,))

        self._forward = vmap(call, randomness="error")

    @classmethod
    def replicate(cls, model: nn.Module, count: int, device: torch.device | str = "cpu") -> Self:
        """``count`` devices that all start from ``model``."""
        return cls([model] * count, device)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, ``(K, *shape)``, for an optimizer."""
        return list(self._parameters.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of inputs ``(K, B, *sample)``."""
        result: torch.Tensor = self._forward(self._parameters, self._buffers, x)
        return result

    @torch.no_grad()
    def device_states(self) -> list[dict[str, np.ndarray]]:
        """Each device's exchanged state, read from its slice of the stacked tensors."""
        model = self._template
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        stacked = {**self._parameters, **self._buffers}
        states = []
        for k in range(self.count):
            for name, target in tensors.items():
                target.copy_(stacked[name][k])
            states.append(exchanged_state(model))
        return states


def _stacked(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).to(device=device, copy=True)
