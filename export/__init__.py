"""Deployable INT8 artifacts: ONNX Q/DQ run by onnxruntime, packed, with a signed manifest.

``export_model`` turns a saved global or tier model into ``<name>.int8.onnx.xz`` and
``<name>.manifest.json``; ``verify_artifact`` checks both and runs the artifact. Needs the
``export`` extra (``pip install 'stamen[export]'``).
"""

from stamen.export.manifest import load_or_create_key, load_public_key
from stamen.export.packing import pack, unpack
from stamen.export.pipeline import (
    ExportResult,
    VerifyReport,
    calibration_samples,
    export_model,
    verify_artifact,
)
from stamen.export.runtime import (
    RuntimeMeasure,
    measure_onnx,
    peak_inference_bytes,
)

__all__ = [
    "ExportResult",
    "RuntimeMeasure",
    "VerifyReport",
    "calibration_samples",
    "export_model",
    "load_or_create_key",
    "load_public_key",
    "measure_onnx",
    "pack",
    "peak_inference_bytes",
    "unpack",
    "verify_artifact",
]
