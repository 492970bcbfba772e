"""A float model to a deployable INT8 ONNX graph, through maintained tools only.

1. ``fold_batchnorm``: every ``Conv2d`` directly followed by a ``BatchNorm2d`` (inside an
   ``nn.Sequential``, where Stamen's models keep them) becomes one conv with the BatchNorm
   folded into its weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``).
2. ``to_onnx``: torch's TorchScript-based ONNX exporter (``dynamo=False``), opset 17, a
   dynamic batch axis, constants folded.
3. ``quantize_int8``: onnxruntime's static quantization in QDQ format: weights int8 symmetric
   per output channel, activations uint8 per tensor with ranges calibrated on real samples.
   onnxruntime's pre-processing (shape inference and graph optimization) runs first, and at
   load time onnxruntime fuses each ``DequantizeLinear -> Conv -> Relu -> QuantizeLinear``
   chain into one integer ``QLinearConv`` with the ReLU absorbed into its output range.

Pruned weights stay exact zeros through all three steps, so ``stamen.export.packing`` can
make sparsity shrink the file.

Examples:
    >>> from stamen.models import ModelSpec, build_model
    >>> model = build_model(ModelSpec("mobilenet", (1, 8, 8), num_classes=10), seed=0).eval()
    >>> folded = fold_batchnorm(model)
    >>> sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    0
    >>> x = torch.randn(2, 1, 8, 8)
    >>> bool(torch.allclose(folded(x), model(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stamen.export.compaction import compact

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with each Conv2d+BatchNorm2d pair folded.

    The folded BatchNorm is replaced by ``nn.Identity``; ``model`` itself is unchanged.
    """
    folded = copy.deepcopy(model).eval()
    _fold(folded)
    return folded


def _fold(parent: nn.Module) -> None:
    children = list(parent.named_children())
    for index, (name, child) in enumerate(children):
        follower = children[index + 1] if index + 1 < len(children) else None
        if (
            isinstance(parent, nn.Sequential)
            and type(child) is nn.Conv2d
            and follower is not None
            and type(follower[1]) is nn.BatchNorm2d
            and follower[1].track_running_stats
        ):
            setattr(parent, name, fuse_conv_bn_eval(child, follower[1]))
            setattr(parent, follower[0], nn.Identity())
        else:
            _fold(child)


def to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Export ``model`` (float, eval mode) to ONNX bytes with a dynamic batch axis."""
    example = torch.zeros(1, *input_shape)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with warnings.catch_warnings():
        # torch 2.9+ warns that the TorchScript exporter is legacy; it needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    data = path.read_bytes()
    path.unlink()
    path.parent.rmdir()
    return data


class _Batches(CalibrationDataReader):
    """Feeds calibration samples to onnxruntime's calibrator in batches."""

    def __init__(self, samples: np.ndarray, batch_size: int) -> None:
        self._batches = [
            {INPUT_NAME: np.ascontiguousarray(samples[i : i + batch_size], dtype=np.float32)}
            for i in range(0, len(samples), batch_size)
        ]
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def quantize_int8(
    onnx_fp32: bytes, calibration: np.ndarray, batch_size: int = 64, *, compacted: bool = True
) -> bytes:
    """Statically quantize an ONNX model to INT8 QDQ: int8 weights, uint8 activations.

    Args:
        onnx_fp32: The float model from ``to_onnx``.
        calibration: Prepared input samples ``(N, *input_shape)`` whose activation ranges
            (min and max) set the activation scales.
        batch_size: Calibration batch size.
        compacted: Trim the graph for deployment (``stamen.export.compaction``); ``False``
            keeps the quantizer's readable tensor names.
    """
    if len(calibration) == 0:
        raise ValueError("quantize_int8 needs at least one calibration sample")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "fp32.onnx").write_bytes(onnx_fp32)
        quant_pre_process(str(folder / "fp32.onnx"), str(folder / "pre.onnx"))
        quantize_static(
            str(folder / "pre.onnx"),
            str(folder / "int8.onnx"),
            _Batches(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(folder / "int8.onnx"))
    return (compact(model) if compacted else model).SerializeToString()
