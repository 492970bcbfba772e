"""Compression: update and model codecs, and the wire format they travel in."""

from stamen.compression.codecs import (
    FP16,
    FP32,
    CodecPipeline,
    Int8Symmetric,
    Lossless,
    TopK,
    Uniform,
    ValueFormat,
    Zlib,
)
from stamen.compression.distillation import (
    DistillConfig,
    distill,
    ensemble_logits,
    kd_loss,
    model_logits,
)
from stamen.compression.downlink import (
    DecodedModel,
    DownlinkCodec,
    DownlinkCodecConfig,
    EncodedModel,
    decode_model,
)
from stamen.compression.error_feedback import ErrorFeedback, ErrorFeedbackResult
from stamen.compression.hashing import dense_nbytes, model_hash
from stamen.compression.mixed_precision import (
    LayerInfo,
    PrecisionPlan,
    allocate_bits,
    apply_plan,
    measure_sensitivity,
    plan_precision,
    quantizable_layers,
)
from stamen.compression.pruning import (
    PruningConfig,
    PruningMethod,
    SparsitySchedule,
    apply_masks,
    compute_masks,
    measure_sparsity,
    prunable_parameters,
    remove_masks,
)
from stamen.compression.qat import (
    QATConfig,
    QATConv2d,
    QATConvBn2d,
    QATLinear,
    fake_quantize_weight,
    prepare_qat,
)
from stamen.compression.tensor_decode import decode_tensor
from stamen.compression.uplink import (
    DecodedUpdate,
    EncodedUpdate,
    UplinkCodec,
    UplinkCodecConfig,
    decode_update,
)
from stamen.compression.wire import FORMAT_VERSION

__all__ = [
    "FORMAT_VERSION",
    "FP16",
    "FP32",
    "CodecPipeline",
    "DecodedModel",
    "DecodedUpdate",
    "DistillConfig",
    "DownlinkCodec",
    "DownlinkCodecConfig",
    "EncodedModel",
    "EncodedUpdate",
    "ErrorFeedback",
    "ErrorFeedbackResult",
    "Int8Symmetric",
    "LayerInfo",
    "Lossless",
    "PrecisionPlan",
    "PruningConfig",
    "PruningMethod",
    "QATConfig",
    "QATConv2d",
    "QATConvBn2d",
    "QATLinear",
    "SparsitySchedule",
    "TopK",
    "Uniform",
    "UplinkCodec",
    "UplinkCodecConfig",
    "ValueFormat",
    "Zlib",
    "allocate_bits",
    "apply_masks",
    "apply_plan",
    "compute_masks",
    "decode_model",
    "decode_tensor",
    "decode_update",
    "dense_nbytes",
    "distill",
    "ensemble_logits",
    "fake_quantize_weight",
    "kd_loss",
    "measure_sensitivity",
    "measure_sparsity",
    "model_hash",
    "model_logits",
    "plan_precision",
    "prepare_qat",
    "prunable_parameters",
    "quantizable_layers",
    "remove_masks",
]
