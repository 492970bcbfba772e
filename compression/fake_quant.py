"""Fake quantization primitives: per-channel symmetric weights, per-tensor affine activations.

Both are built on torch's maintained ``torch.fake_quantize_per_channel_affine`` and
``torch.fake_quantize_per_tensor_affine`` ops, which pass gradients straight through the
rounding (the straight-through estimator).
"""

from __future__ import annotations

import torch
from torch import nn

from stamen.core.errors import ConfigError
from stamen.models import WEIGHT_BITS

ACTIVATION_BITS = (8,)
_SCALE_FLOOR = torch.finfo(torch.float32).eps  # as torch's observers do, to avoid 1/0


def check_bits(field: str, bits: object, allowed: tuple[int, ...]) -> None:
    if isinstance(bits, bool) or bits not in allowed:
        choices = ", ".join(str(value) for value in allowed)
        raise ConfigError(f"{field} must be one of {choices}; got {bits!r}")


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Return the symmetric per-output-channel scale that ``fake_quantize_weight`` uses.

    Channel ``c`` maps to integers ``round(weight[c] / scale[c])`` in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``; the scale is ``max|weight[c]|`` over that bound.
    """
    check_bits("bits", bits, WEIGHT_BITS)
    bound = 2 ** (bits - 1) - 1
    max_abs = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (max_abs.float() / bound).clamp(min=_SCALE_FLOOR)


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``weight`` to its ``bits``-bit symmetric per-channel grid; gradients pass straight.

    Zero stays exactly zero, so pruned weights remain pruned after quantization.

    Examples:
        >>> weight = torch.tensor([[0.9, -0.5, 0.2], [0.1, 0.04, -0.06]])
        >>> fake_quantize_weight(weight, bits=2)  # levels -1, 0, 1 times max|w| per row
        tensor([[ 0.9000, -0.9000,  0.0000],
                [ 0.1000,  0.0000, -0.1000]])
    """
    bound = 2 ** (bits - 1) - 1
    scale = weight_scale(weight, bits)
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -bound, bound)


def affine_qparams(
    running_min: torch.Tensor, running_max: torch.Tensor, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and int32 zero point of the affine grid over an observed range (elementwise).

    The range is widened to include 0, so zero (ReLU output, padding) stays exact.
    """
    low = running_min.clamp(max=0.0)
    high = running_max.clamp(min=0.0)
    scale = ((high - low) / (quant_max - quant_min)).clamp(min=_SCALE_FLOOR)
    zero_point = (quant_min - torch.round(low / scale)).clamp(quant_min, quant_max)
    return scale, zero_point.to(torch.int32)


class ActivationFakeQuantizer(nn.Module):
    """Fake-quantize a tensor to affine int8 over a range observed while training.

    In training mode each batch's min and max update a moving average (the first batch sets
    it); in eval mode the range is frozen. The range always includes 0, so zero (ReLU output,
    padding) is exact. Before any training batch has been seen, the input passes through
    unchanged. The observed range is device-local: ``exchanged_state`` skips it.
    """

    stamen_device_local = True  # see stamen.models.DEVICE_LOCAL_ATTRIBUTE
    running_min: torch.Tensor
    running_max: torch.Tensor
    observed: torch.Tensor

    def __init__(
        self, bits: int = 8, momentum: float = 0.1, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        check_bits("activation_bits", bits, ACTIVATION_BITS)
        self.quant_min = -(2 ** (bits - 1))
        self.quant_max = 2 ** (bits - 1) - 1
        self.momentum = momentum
        self.register_buffer("running_min", torch.zeros((), device=device))
        self.register_buffer("running_max", torch.zeros((), device=device))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` when training, then return it fake-quantized."""
        if self.training:
            self._observe(x)
        if not self.observed:
            return x
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point, self.quant_min, self.quant_max
        )

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scale, zero_point)``: ``q = clamp(round(x / scale) + zero_point)``."""
        return affine_qparams(self.running_min, self.running_max, self.quant_min, self.quant_max)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        batch_min, batch_max = torch.aminmax(x.detach().float())
        if not self.observed:
            self.running_min.copy_(batch_min)
            self.running_max.copy_(batch_max)
            self.observed.fill_(True)
            return
        self.running_min.lerp_(batch_min, self.momentum)
        self.running_max.lerp_(batch_max, self.momentum)

    def extra_repr(self) -> str:
        return f"quant_min={self.quant_min}, quant_max={self.quant_max}, momentum={self.momentum}"
