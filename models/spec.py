"""What model to build: the architecture name and the shape of its input and output."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from stamen.core.errors import ConfigError

WEIGHT_BITS = (2, 4, 8)
"""The weight precisions a model can be trained at (QAT) and shipped in."""


class ModelName(enum.StrEnum):
    """The edge architectures Stamen can build."""

    LENET = "lenet"
    MOBILENET = "mobilenet"
    MLP = "mlp"


_ALLOWED_NAMES = ", ".join(name.value for name in ModelName)


@dataclass(frozen=True)
class ModelSpec:
    """A model architecture and the data it is built for.

    Attributes:
        name: Which architecture to build. A plain string from TOML or the CLI is accepted
            and converted.
        input_shape: ``(C, H, W)`` for images or ``(F,)`` for feature vectors, without the
            batch dimension. A list is accepted and converted to a tuple.
        num_classes: Number of output classes (at least 2).
        width: Channel and hidden-size multiplier, greater than 0. At 1.0 LeNet is exactly the
            reference W1 network; smaller values give the students for weaker device tiers.

    Examples:
        >>> spec = ModelSpec("lenet", [1, 28, 28], num_classes=10)
        >>> spec.name, spec.input_shape
        (<ModelName.LENET: 'lenet'>, (1, 28, 28))
    """

    name: ModelName
    input_shape: tuple[int, ...]
    num_classes: int
    width: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "name", ModelName(self.name))
        except ValueError:
            raise ConfigError(f"name must be one of {_ALLOWED_NAMES}; got {self.name!r}") from None
        shape = tuple(self.input_shape)
        if len(shape) not in (1, 3) or not all(_is_positive_int(dim) for dim in shape):
            raise ConfigError(
                "input_shape must be (C, H, W) or (F,) of positive integers; "
                f"got {self.input_shape!r}"
            )
        if self.name is not ModelName.MLP and len(shape) != 3:
            raise ConfigError(
                f"input_shape must be (C, H, W) for {self.name.value}; got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)
        if not _is_positive_int(self.num_classes) or self.num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2; got {self.num_classes!r}")
        if (
            isinstance(self.width, bool)
            or not isinstance(self.width, int | float)
            or not math.isfinite(self.width)
            or self.width <= 0
        ):
            raise ConfigError(f"width must be a finite number > 0; got {self.width!r}")
        object.__setattr__(self, "width", float(self.width))


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
