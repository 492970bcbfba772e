"""Edge model architectures and the state federated training exchanges.

``build_model(ModelSpec(...))`` makes a LeNet-style CNN, a small MobileNet-style CNN, or an
MLP; ``exchanged_state`` and ``load_exchanged_state`` move its weights in and out as numpy
arrays, whether the model is plain, prepared for QAT, or pruned.
"""

from stamen.models.architectures import MLP, LeNet, MobileNet, scaled_channels
from stamen.models.build import build_model
from stamen.models.cost import forward_macs, training_flops_per_sample
from stamen.models.spec import ModelName, ModelSpec
from stamen.models.state import (
    DEVICE_LOCAL_ATTRIBUTE,
    count_parameters,
    exchanged_state,
    load_exchanged_state,
)

__all__ = [
    "DEVICE_LOCAL_ATTRIBUTE",
    "MLP",
    "LeNet",
    "MobileNet",
    "ModelName",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "exchanged_state",
    "forward_macs",
    "load_exchanged_state",
    "scaled_channels",
    "training_flops_per_sample",
]
