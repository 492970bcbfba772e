"""Edge model architectures and the state federated training exchanges.

``build_model(ModelSpec(...))`` makes a LeNet-style CNN, a small MobileNet-style CNN, or an
MLP; ``exchanged_state`` and ``load_exchanged_state`` move its weights in and out as numpy
arrays, whether the model is plain, prepared for QAT, or pruned.
"""

from stamen.models.architectures import LeNet
from stamen.models.build import build_model, to_channels_last
from stamen.models.checkpoint import (
    GLOBAL_MODEL_FILE,
    ModelFileError,
    SavedModel,
    load_model_file,
    save_model_file,
    tier_model_file,
)
from stamen.models.cost import training_flops_per_sample
from stamen.models.spec import WEIGHT_BITS, ModelName, ModelSpec
from stamen.models.stacked_layers import StackedBatchNorm2d, StackedConv2d, StackedLinear
from stamen.models.stacking import DeviceStack, GroupedStack, NotStackable
from stamen.models.state import (
    DEVICE_LOCAL_ATTRIBUTE,
    RUNNING_STATISTICS,
    count_parameters,
    exchanged_state,
    is_running_statistic,
    load_exchanged_state,
)
from stamen.models.students import StudentSpec, parse_students, student_spec
from stamen.models.vmap_stack import VmapStack

__all__ = [
    "DEVICE_LOCAL_ATTRIBUTE",
    "GLOBAL_MODEL_FILE",
    "RUNNING_STATISTICS",
    "WEIGHT_BITS",
    "DeviceStack",
    "GroupedStack",
    "LeNet",
    "ModelFileError",
    "ModelName",
    "ModelSpec",
    "NotStackable",
    "SavedModel",
    "StackedBatchNorm2d",
    "StackedConv2d",
    "StackedLinear",
    "StudentSpec",
    "VmapStack",
    "build_model",
    "count_parameters",
    "exchanged_state",
    "is_running_statistic",
    "load_exchanged_state",
    "load_model_file",
    "parse_students",
    "save_model_file",
    "student_spec",
    "tier_model_file",
    "to_channels_last",
    "training_flops_per_sample",
]
