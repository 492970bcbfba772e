"""Run an artifact in onnxruntime, and its PyTorch original beside it: accuracy, latency, memory.

Latency is the median (p50) wall time of batch-1 inference on one CPU thread, for both
runtimes, after a warm-up; the machine is shared and noisy, so compare the two as a ratio
measured in the same call. Peak inference memory is the growth of a fresh process's resident
set (``psutil``) while onnxruntime loads the artifact and runs it at batch 1: what a device
would need on top of the runtime library itself. It is coarse (page granularity, the
runtime's own arenas), so read it as an order of magnitude.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from stamen.export.onnx_int8 import INPUT_NAME

_EVAL_BATCH = 1000


@dataclass(frozen=True)
class RuntimeMeasure:
    """What one model measured on a test set."""

    accuracy: float
    latency_ms_p50: float


def session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with all graph optimizations (QDQ fusion included)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def onnx_logits(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits of ``x`` in batches."""
    outputs = [
        sess.run(None, {INPUT_NAME: np.ascontiguousarray(x[i : i + _EVAL_BATCH])})[0]
        for i in range(0, len(x), _EVAL_BATCH)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def measure_onnx(
    onnx_bytes: bytes, x: np.ndarray, y: np.ndarray, latency_runs: int = 200
) -> RuntimeMeasure:
    """Accuracy on ``(x, y)`` and batch-1 p50 latency of an ONNX model.

    Examples:
        >>> from stamen.export.onnx_int8 import to_onnx
        >>> onnx_bytes = to_onnx(nn.Linear(4, 2), (4,))
        >>> x, y = np.eye(4, dtype=np.float32), np.zeros(4, dtype=np.int64)
        >>> measured = measure_onnx(onnx_bytes, x, y, latency_runs=5)
        >>> 0 <= measured.accuracy <= 1, measured.latency_ms_p50 > 0
        (True, True)
    """
    sess = session(onnx_bytes)
    accuracy = float((onnx_logits(sess, x).argmax(axis=1) == y).mean())
    sample = np.ascontiguousarray(x[:1])
    latency = p50_ms(lambda: sess.run(None, {INPUT_NAME: sample}), latency_runs)
    return RuntimeMeasure(accuracy, latency)


@torch.no_grad()
def measure_torch(
    model: nn.Module, x: np.ndarray, y: np.ndarray, latency_runs: int = 200
) -> RuntimeMeasure:
    """Accuracy on ``(x, y)`` and batch-1 p50 latency of a PyTorch model, on one thread."""
    model.eval()
    correct = 0
    for i in range(0, len(x), _EVAL_BATCH):
        logits = model(torch.from_numpy(np.array(x[i : i + _EVAL_BATCH], dtype=np.float32)))
        correct += int((logits.argmax(dim=1).numpy() == y[i : i + _EVAL_BATCH]).sum())
    sample = torch.from_numpy(np.array(x[:1], dtype=np.float32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latency = p50_ms(lambda: model(sample), latency_runs)
    finally:
        torch.set_num_threads(threads)
    return RuntimeMeasure(correct / max(len(x), 1), latency)


def p50_ms(call: Callable[[], object], runs: int, warmup: int = 20) -> float:
    """Median wall time of ``call`` in milliseconds; NaN when ``runs`` is 0 (not timed)."""
    if runs <= 0:
        return float("nan")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def peak_inference_bytes(onnx_bytes: bytes, sample: np.ndarray) -> int:
    """Resident-memory growth while onnxruntime loads ``onnx_bytes`` and runs one sample.

    Measured in a fresh Python process, after onnxruntime and numpy are imported, so that
    this process's caches and allocator do not hide or inflate it.

    Examples:
        >>> from stamen.export.onnx_int8 import to_onnx
        >>> onnx_bytes = to_onnx(nn.Linear(256, 256), (256,))
        >>> peak_inference_bytes(onnx_bytes, np.zeros((1, 256), np.float32)) >= 0
        True
    """
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.onnx"
        sample_path = Path(tmp) / "sample.npy"
        model_path.write_bytes(onnx_bytes)
        np.save(sample_path, np.ascontiguousarray(sample[:1], dtype=np.float32))
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(model_path), str(sample_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed: {result.stderr.strip().splitlines()[-1:]}")
    return int(result.stdout.strip())


_MEMORY_PROBE = """
import sys
import numpy as np
import onnxruntime as ort
import psutil

process = psutil.Process()
sample = np.load(sys.argv[2])
before = process.memory_info().rss
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: sample})
print(max(0, process.memory_info().rss - before))
"""
