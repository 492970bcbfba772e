"""The edge architectures: a LeNet-style CNN, a small MobileNet-style CNN, and an MLP.

Each network registers its final ``nn.Linear`` last and names it ``classifier``, because
pruning leaves the module registered last alone (see ``stamen.compression.pruning``).
Conv+BatchNorm pairs sit next to each other inside ``nn.Sequential`` containers, which is
where quantization-aware training finds them to fold the BatchNorm into the conv.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stamen.core.errors import ConfigError

_LENET_REFERENCE_SIZE = 28
_LENET_KERNEL = 5


def scaled_channels(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of 4 and at least 4.

    Multiples of 4 keep int8 kernels on edge CPUs vectorised.

    Examples:
        >>> scaled_channels(16, 0.5), scaled_channels(16, 0.1), scaled_channels(64, 1.3)
        (8, 4, 84)
    """
    return max(4, int(channels * width / 4 + 0.5) * 4)


class LeNet(nn.Module):
    """The reference W1 CNN: conv 5x5, pool 2, conv 5x5, pool 2, FC, FC, ReLU after each.

    For a 1x28x28 input at ``width`` 1.0 this is exactly conv 1->8, conv 8->16, FC 256->64->10.
    Images smaller than 28 pixels get padding 2 on both convs so that 8x8 digits survive the
    two 5x5 kernels; the first FC layer's input size follows from the image size.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
    ) -> None:
        super().__init__()
        in_channels, height, width_px = input_shape
        padding = 2 if min(height, width_px) < _LENET_REFERENCE_SIZE else 0
        feature_height = _lenet_feature_size(height, padding)
        feature_width = _lenet_feature_size(width_px, padding)
        if feature_height < 1 or feature_width < 1:
            raise ConfigError(
                f"input_shape must be at least 4x4 pixels for lenet; got {tuple(input_shape)!r}"
            )
        conv1_channels = scaled_channels(8, width)
        conv2_channels = scaled_channels(16, width)
        hidden = scaled_channels(64, width)
        self.conv1 = nn.Conv2d(in_channels, conv1_channels, _LENET_KERNEL, padding=padding)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, _LENET_KERNEL, padding=padding)
        self.fc1 = nn.Linear(conv2_channels * feature_height * feature_width, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images shaped ``(N, C, H, W)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.classifier(x)


def _lenet_feature_size(size: int, padding: int) -> int:
    for _ in range(2):
        size = (size + 2 * padding - _LENET_KERNEL + 1) // 2
    return size


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,  # the BatchNorm's shift makes a conv bias redundant
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNet(nn.Module):
    """A small MobileNet-style CNN: a stem conv, depthwise-separable blocks, global pooling.

    Each block is a depthwise 3x3 conv + BN + ReLU followed by a pointwise 1x1 conv + BN +
    ReLU. Three blocks use stride 2, so 28x28 inputs end at 4x4 and 8x8 inputs at 1x1 before
    the global average pool. Channel counts are the base counts below scaled by ``width``.
    """

    STEM_CHANNELS = 16
    # (output channels, stride) of each depthwise-separable block at width 1.0.
    BLOCKS: tuple[tuple[int, int], ...] = ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2))

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
    ) -> None:
        super().__init__()
        in_channels = input_shape[0]
        channels = scaled_channels(self.STEM_CHANNELS, width)
        self.stem = _conv_bn_relu(in_channels, channels, 3, stride=1)
        blocks: list[nn.Module] = []
        for base_channels, stride in self.BLOCKS:
            out_channels = scaled_channels(base_channels, width)
            depthwise = _conv_bn_relu(channels, channels, 3, stride=stride, groups=channels)
            pointwise = _conv_bn_relu(channels, out_channels, 1, stride=1)
            blocks.append(nn.Sequential(*depthwise, *pointwise))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images shaped ``(N, C, H, W)``."""
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    """A Linear-ReLU stack for sensor feature vectors; image inputs are flattened first.

    Hidden sizes are 128 and 64 scaled by ``width``.
    """

    HIDDEN_SIZES: tuple[int, ...] = (128, 64)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        in_features = 1
        for dim in input_shape:
            in_features *= dim
        layers: list[nn.Module] = [nn.Flatten()]
        for base_size in self.HIDDEN_SIZES:
            hidden = scaled_channels(base_size, width)
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            in_features = hidden
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch shaped ``(N, F)`` or ``(N, C, H, W)``."""
        return self.classifier(self.hidden(x))
