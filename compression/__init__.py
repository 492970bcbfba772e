"""Compression: QAT, pruning, mixed precision, distillation, and the update and model codecs.

The verbs and their frozen configs: ``UplinkCodec(UplinkCodecConfig(...))`` encodes a
device's update and ``decode_update`` checks and decodes it on the server;
``DownlinkCodec``/``decode_model`` do the same for the global model; ``prepare_qat`` and
``QATConfig`` fake-quantize a model's layers; ``compute_masks``/``apply_masks``/
``remove_masks`` with ``PruningConfig`` prune it; ``plan_precision``/``apply_plan`` give each
layer its own weight bits; ``distill`` fits a student to an ensemble's soft targets. The
codec stages, bit packing and wire parsing behind them live in their own modules.
"""

from stamen.compression.codecs import CodecScope, Lossless, ValueFormat
from stamen.compression.delta_downlink import DeltaPublisher, Published, kept_model_bytes
from stamen.compression.distillation import (
    DistillConfig,
    distill,
    ensemble_logits,
    model_logits,
)
from stamen.compression.downlink import (
    DecodedModel,
    DownlinkCodec,
    DownlinkCodecConfig,
    EncodedModel,
    decode_model,
    model_payload_hash,
)
from stamen.compression.hashing import dense_nbytes, model_hash
from stamen.compression.mixed_precision import (
    LayerInfo,
    PrecisionPlan,
    apply_plan,
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
    remove_masks,
)
from stamen.compression.qat import QATConfig, prepare_qat
from stamen.compression.stacked_qat import StackedQATConv2d, StackedQATConvBn2d, StackedQATLinear
from stamen.compression.uplink import (
    DecodedUpdate,
    EncodedUpdate,
    UplinkCodec,
    UplinkCodecConfig,
    decode_update,
    update_base_hash,
)

__all__ = [
    "CodecScope",
    "DecodedModel",
    "DecodedUpdate",
    "DeltaPublisher",
    "DistillConfig",
    "DownlinkCodec",
    "DownlinkCodecConfig",
    "EncodedModel",
    "EncodedUpdate",
    "LayerInfo",
    "Lossless",
    "PrecisionPlan",
    "PruningConfig",
    "PruningMethod",
    "Published",
    "QATConfig",
    "SparsitySchedule",
    "StackedQATConv2d",
    "StackedQATConvBn2d",
    "StackedQATLinear",
    "UplinkCodec",
    "UplinkCodecConfig",
    "ValueFormat",
    "apply_masks",
    "apply_plan",
    "compute_masks",
    "decode_model",
    "decode_update",
    "dense_nbytes",
    "distill",
    "ensemble_logits",
    "kept_model_bytes",
    "measure_sparsity",
    "model_hash",
    "model_logits",
    "model_payload_hash",
    "plan_precision",
    "prepare_qat",
    "quantizable_layers",
    "remove_masks",
    "update_base_hash",
]
