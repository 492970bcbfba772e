"""Quantization-aware training (QAT) with torch's maintained fake-quantize ops.

``prepare_qat`` swaps every ``nn.Conv2d`` and ``nn.Linear`` of a model, in place, for a
subclass that fake-quantizes its weight per output channel (symmetric, 2, 4 or 8 bits) and its
input per tensor (affine int8, range observed by a moving average while training, frozen in
eval). See ``stamen.compression.fake_quant`` for the two quantizers. The deprecated
``torch.ao.quantization`` workflow is deliberately not used.

The QAT modules subclass the float ones, so parameter names (``x.weight``, ``x.bias``) and
``torch.nn.utils.prune`` hooks on ``weight`` keep working. Each module is built on the meta
device and then adopts the float module's own parameter objects: no weights are initialised
(which would draw from the global RNG), and optimizers built before the swap still hold the
live parameters.

Conv + BatchNorm: a deployed int8 conv runs with the BatchNorm folded into its weight, so the
quantization error that matters is that of the folded weight ``w * gamma / sqrt(var + eps)``.
A ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes a
``QATConvBn2d`` that fake-quantizes exactly that folded weight, and the ``BatchNorm2d`` becomes
a ``FoldedBatchNorm2d``: it keeps its place, parameters and running statistics (so state_dict
and exchanged keys do not change), but its forward is the identity, because the conv before it
has already applied it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self

import torch
from torch import nn
from torch.nn.utils import prune

from stamen.compression.fake_quant import (
    ACTIVATION_BITS,
    WEIGHT_BITS,
    ActivationFakeQuantizer,
    check_bits,
    fake_quantize_weight,
)
from stamen.core.errors import ConfigError


@dataclass(frozen=True)
class QATConfig:
    """How ``prepare_qat`` quantizes a model.

    Attributes:
        weight_bits: Bits per weight, one of 2, 4, 8. Symmetric per output channel, so a
            channel takes at most ``2**weight_bits - 1`` distinct values.
        activation_bits: Bits per layer input; only 8 (per-tensor affine int8) is supported.
        observer_momentum: Weight of the newest batch in the moving average of the observed
            input range, in (0, 1].

    Examples:
        >>> QATConfig(weight_bits=4).weight_bits
        4
        >>> QATConfig(weight_bits=3)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: weight_bits must be one of 2, 4, 8; got 3
    """

    weight_bits: int = 8
    activation_bits: int = 8
    observer_momentum: float = 0.1

    def __post_init__(self) -> None:
        check_bits("weight_bits", self.weight_bits, WEIGHT_BITS)
        check_bits("activation_bits", self.activation_bits, ACTIVATION_BITS)
        momentum = self.observer_momentum
        if isinstance(momentum, bool) or not isinstance(momentum, int | float):
            raise ConfigError(f"observer_momentum must be a number in (0, 1]; got {momentum!r}")
        if not 0 < momentum <= 1:
            raise ConfigError(f"observer_momentum must be in (0, 1]; got {momentum!r}")


class QATLinear(nn.Linear):
    """``nn.Linear`` with a fake-quantized weight and input.

    Attributes:
        weight_bits: Bits of the per-channel symmetric weight grid.
        input_quantizer: The int8 fake quantizer of the layer input, with its observed range.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: QATConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        config = config or QATConfig()
        self.weight_bits = config.weight_bits
        self.input_quantizer = _input_quantizer(config, device)

    def reset_parameters(self) -> None:
        """Initialise the weights, except on the meta device (``from_float`` adopts them)."""
        if not self.weight.is_meta:
            super().reset_parameters()

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QATConfig) -> Self:
        """Return a QAT layer that shares ``linear``'s parameters."""
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, config, "meta")
        _adopt_parameters(qat, linear, config)
        return qat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer with fake-quantized input and weight."""
        weight = fake_quantize_weight(self.weight, self.weight_bits)
        return nn.functional.linear(self.input_quantizer(x), weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class QATConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight and input.

    Attributes:
        weight_bits: Bits of the per-channel symmetric weight grid.
        input_quantizer: The int8 fake quantizer of the layer input, with its observed range.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        config: QATConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        config = config or QATConfig()
        self.weight_bits = config.weight_bits
        self.input_quantizer = _input_quantizer(config, device)

    def reset_parameters(self) -> None:
        """Initialise the weights, except on the meta device (``from_float`` adopts them)."""
        if not self.weight.is_meta:
            super().reset_parameters()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: QATConfig) -> Self:
        """Return a QAT layer that shares ``conv``'s parameters."""
        qat = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]  # Conv2d stores 2-tuples
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            config,
            "meta",
        )
        _adopt_parameters(qat, conv, config)
        return qat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution with fake-quantized input and weight."""
        # Channels-last, explicitly: CPU convolutions and the pooling after them run fastest
        # so, and a 1-input-channel weight would otherwise keep NCHW strides.
        weight = fake_quantize_weight(self.weight, self.weight_bits).to(
            memory_format=torch.channels_last
        )
        return self._conv_forward(self.input_quantizer(x), weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose preceding ``QATConvBn2d`` applies it; its forward is identity.

    It keeps the parameters and running statistics, and stays at its place in the model, so
    checkpoints and exchanged state look the same as for the float model.
    """

    @classmethod
    def from_float(cls, batch_norm: nn.BatchNorm2d) -> FoldedBatchNorm2d:
        """Return a folded BatchNorm that shares ``batch_norm``'s tensors."""
        folded = cls(
            batch_norm.num_features,
            batch_norm.eps,
            batch_norm.momentum,
            batch_norm.affine,
            batch_norm.track_running_stats,
            device="meta",
        )
        folded.weight = batch_norm.weight
        folded.bias = batch_norm.bias
        folded.running_mean = batch_norm.running_mean
        folded.running_var = batch_norm.running_var
        folded.num_batches_tracked = batch_norm.num_batches_tracked
        folded.train(batch_norm.training)
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x``: the conv before this module has already normalised it."""
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the ordinary BatchNorm (batch statistics in training mode)."""
        return super().forward(x)


class QATConvBn2d(QATConv2d):
    """A conv whose fake-quantized weight is the BatchNorm-folded weight.

    Eval: ``conv(x, fq(w * s), (b - mean) * s + beta)`` with ``s = gamma / sqrt(var + eps)``,
    which is what the deployed int8 conv computes. Training: as in Jacob et al. (2018) and
    torch's ConvBn modules, the conv runs with ``fq(w * s)`` using the running statistics, the
    factor ``s`` is divided out again, and the BatchNorm then normalises with batch statistics
    and updates its running statistics.

    The BatchNorm stays registered where it was (as a ``FoldedBatchNorm2d``); this module only
    holds a reference to it, so its tensors are not registered twice. Build it with
    ``from_conv_bn`` (``prepare_qat`` does).
    """

    folded_batch_norm: FoldedBatchNorm2d

    @classmethod
    def from_conv_bn(
        cls, conv: nn.Conv2d, batch_norm: FoldedBatchNorm2d, config: QATConfig
    ) -> QATConvBn2d:
        """Return a QAT conv that shares ``conv``'s parameters and folds ``batch_norm``."""
        qat = cls.from_float(conv, config)
        # object.__setattr__ bypasses nn.Module's submodule registration on purpose.
        object.__setattr__(qat, "folded_batch_norm", batch_norm)
        return qat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution and the folded BatchNorm with fake-quantized weights."""
        x = self.input_quantizer(x)
        bn_scale = self._bn_scale()
        weight = fake_quantize_weight(self.weight * bn_scale.reshape(-1, 1, 1, 1), self.weight_bits)
        if not self.training:
            return self._conv_forward(x, weight, self._folded_bias(bn_scale))
        # A zero gamma zeroes the folded weight; any finite divisor then gives the same output.
        divisor = torch.where(bn_scale == 0, torch.ones_like(bn_scale), bn_scale)
        y = self._conv_forward(x, weight, None) / divisor.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return self.folded_batch_norm.normalize(y)

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the float weight and bias of the conv with the BatchNorm folded in."""
        bn_scale = self._bn_scale()
        return self.weight * bn_scale.reshape(-1, 1, 1, 1), self._folded_bias(bn_scale)

    def _bn_scale(self) -> torch.Tensor:
        bn = self.folded_batch_norm
        assert bn.running_var is not None  # from_conv_bn requires tracked statistics
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        return inv_std if bn.weight is None else bn.weight * inv_std

    def _folded_bias(self, bn_scale: torch.Tensor) -> torch.Tensor:
        bn = self.folded_batch_norm
        assert bn.running_mean is not None
        bias = -bn.running_mean if self.bias is None else self.bias - bn.running_mean
        folded = bias * bn_scale
        return folded if bn.bias is None else folded + bn.bias


QAT_MODULE_TYPES = (QATLinear, QATConv2d)


def prepare_qat(model: nn.Module, config: QATConfig) -> nn.Module:
    """Swap the model's ``Conv2d`` and ``Linear`` layers for QAT layers, in place.

    Call it before pruning masks are applied and before building the optimizer (the QAT
    layers share the original parameter objects, so an existing optimizer also keeps working).
    ``Conv2d`` subclasses and other layer types are left alone.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: The model is already prepared, or carries pruning reparametrization.

    Examples:
        >>> from stamen.models import ModelSpec, build_model, exchanged_state
        >>> model = build_model(ModelSpec("mobilenet", (1, 8, 8), num_classes=10), seed=0)
        >>> keys = list(exchanged_state(model))
        >>> model = prepare_qat(model, QATConfig(weight_bits=4))
        >>> type(model.stem[0]).__name__, type(model.classifier).__name__
        ('QATConvBn2d', 'QATLinear')
        >>> list(exchanged_state(model)) == keys
        True
    """
    if any(isinstance(module, QAT_MODULE_TYPES) for module in model.modules()):
        raise ValueError("model is already prepared for QAT; prepare_qat must run once")
    if prune.is_pruned(model):
        raise ValueError("prepare_qat must run before pruning; call remove_masks(model) first")
    _swap_layers(model, config)
    return model


def _swap_layers(parent: nn.Module, config: QATConfig) -> None:
    children = list(parent.named_children())
    for index, (name, child) in enumerate(children):
        follower = children[index + 1] if index + 1 < len(children) else None
        if type(child) is nn.Conv2d:
            if (
                isinstance(parent, nn.Sequential)
                and follower is not None
                and _can_fold(child, follower[1])
            ):
                assert isinstance(follower[1], nn.BatchNorm2d)
                folded = FoldedBatchNorm2d.from_float(follower[1])
                setattr(parent, follower[0], folded)
                setattr(parent, name, QATConvBn2d.from_conv_bn(child, folded, config))
            else:
                setattr(parent, name, QATConv2d.from_float(child, config))
        elif type(child) is nn.Linear:
            setattr(parent, name, QATLinear.from_float(child, config))
        else:
            _swap_layers(child, config)


def _can_fold(conv: nn.Conv2d, module: nn.Module) -> bool:
    return (
        type(module) is nn.BatchNorm2d
        and module.track_running_stats
        and module.num_features == conv.out_channels
    )


def _input_quantizer(
    config: QATConfig, device: torch.device | str | None
) -> ActivationFakeQuantizer:
    return ActivationFakeQuantizer(config.activation_bits, config.observer_momentum, device)


def _adopt_parameters(
    qat: QATLinear | QATConv2d, float_module: nn.Linear | nn.Conv2d, config: QATConfig
) -> None:
    qat.weight = float_module.weight
    qat.bias = float_module.bias
    # The quantizer was built on the meta device with the layer; rebuild it where the weight is.
    qat.input_quantizer = _input_quantizer(config, float_module.weight.device)
    qat.train(float_module.training)
