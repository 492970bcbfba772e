"""``stamen export``: a saved model to a signed INT8 artifact, and ``--verify`` back again.

Export: fold BatchNorm, export to ONNX, quantize statically to INT8 QDQ with calibration
samples from the model's dataset, pack (xz, so pruned weights cost almost nothing), and write
``<name>.int8.onnx.xz`` with ``<name>.manifest.json`` beside it. Export also measures the
FP32 model and its fake-quantized twin (Stamen's QAT ops, int8 weights and activations, the
activation ranges observed on the same calibration samples) in PyTorch, and the artifact in
onnxruntime, all on the test set, and records the three accuracies in the manifest.

Verify: check the manifest's signature (and signer, when a key is pinned), the artifact's
size and SHA-256, unpack it, run it in onnxruntime on the test set, and compare accuracy,
size and batch-1 latency with the FP32 PyTorch model it came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from torch import nn

from stamen.compression import QATConfig, measure_sparsity, prepare_qat
from stamen.core.errors import ArtifactError, ConfigError
from stamen.data import Dataset, load_dataset
from stamen.export.manifest import FORMAT, read_manifest, sign_manifest, verify_manifest
from stamen.export.onnx_int8 import (
    INPUT_NAME,
    OUTPUT_NAME,
    fold_batchnorm,
    quantize_int8,
    to_onnx,
)
from stamen.export.packing import PACKED_SUFFIX, pack, unpack
from stamen.export.runtime import measure_onnx, measure_torch, peak_inference_bytes
from stamen.models import SavedModel, count_parameters, load_model_file

CALIBRATION_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    """Where export wrote, and the signed manifest."""

    artifact: Path
    manifest_path: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class VerifyReport:
    """What ``--verify`` measured, beside what the manifest claims."""

    manifest: dict[str, Any]
    artifact_bytes: int
    artifact_accuracy: float
    artifact_latency_ms_p50: float
    peak_inference_bytes: int
    fp32_bytes: int
    fp32_accuracy: float | None
    fp32_latency_ms_p50: float | None


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data``, hex."""
    return hashlib.sha256(data).hexdigest()


def calibration_samples(dataset: Dataset, count: int) -> np.ndarray:
    """``count`` training inputs drawn with a fixed seed (labels are never used).

    Examples:
        >>> from stamen.data import load_dataset
        >>> digits = load_dataset("digits")
        >>> samples = calibration_samples(digits, 512)
        >>> samples.shape, bool((samples == calibration_samples(digits, 512)).all())
        ((512, 1, 8, 8), True)
    """
    rng = np.random.default_rng(CALIBRATION_SEED)
    index = rng.choice(dataset.num_train, size=min(count, dataset.num_train), replace=False)
    return np.ascontiguousarray(dataset.x_train[np.sort(index)])


@torch.no_grad()
def fake_quantized(model: nn.Module, calibration: np.ndarray) -> nn.Module:
    """A copy of ``model`` with Stamen's int8 fake quantization and calibrated input ranges.

    The activation observers see the calibration samples as one batch, so their ranges are
    the samples' min and max, as onnxruntime's MinMax calibration finds them.
    """
    quantized = prepare_qat(copy.deepcopy(model).eval(), QATConfig(weight_bits=8))
    observers = [m for m in quantized.modules() if hasattr(m, "running_min")]
    for observer in observers:
        observer.train()
    quantized(torch.from_numpy(calibration))
    return quantized.eval()


def export_model(
    saved: SavedModel,
    out_dir: Path,
    key: Ed25519PrivateKey,
    *,
    dataset: str | None = None,
    name: str | None = None,
    calibration_size: int = 512,
    packed: bool = True,
    source: Path | None = None,
) -> ExportResult:
    """Export ``saved`` to a signed INT8 artifact in ``out_dir``; see the module docstring.

    Examples:
        >>> import tempfile
        >>> from stamen.models import ModelSpec, build_model, exchanged_state
        >>> spec = ModelSpec("mlp", (1, 8, 8), num_classes=10)
        >>> saved = SavedModel(spec, exchanged_state(build_model(spec, seed=0)), dataset="digits")
        >>> out = Path(tempfile.mkdtemp())
        >>> result = export_model(saved, out, Ed25519PrivateKey.generate(), calibration_size=64)
        >>> result.artifact.name, result.manifest["quantization"]["calibration_samples"]
        ('global.int8.onnx.xz', 64)
        >>> verify_artifact(result.manifest_path, latency_runs=0).artifact_bytes == (
        ...     result.artifact.stat().st_size)
        True
    """
    data = _dataset(dataset or saved.dataset)
    if data.input_shape != saved.spec.input_shape:
        raise ConfigError(
            f"dataset {data.name!r} has inputs {data.input_shape}, the model expects "
            f"{saved.spec.input_shape}"
        )
    stem = name or (saved.tier or "global")
    model = saved.build()
    calibration = calibration_samples(data, calibration_size)
    fp32_onnx = to_onnx(fold_batchnorm(model), saved.spec.input_shape)
    int8_onnx = quantize_int8(fp32_onnx, calibration)
    artifact_bytes = pack(int8_onnx) if packed else int8_onnx
    artifact = out_dir / f"{stem}.int8{PACKED_SUFFIX if packed else '.onnx'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(artifact_bytes)
    fp32 = measure_torch(model, data.x_test, data.y_test, latency_runs=0)
    fake_quant = measure_torch(
        fake_quantized(model, calibration), data.x_test, data.y_test, latency_runs=0
    )
    onnx_run = measure_onnx(int8_onnx, data.x_test, data.y_test, latency_runs=0)
    values: dict[str, Any] = {
        "format": FORMAT,
        "artifact": artifact.name,
        "packing": "xz" if packed else "none",
        "bytes": len(artifact_bytes),
        "sha256": sha256_hex(artifact_bytes),
        "onnx_bytes": len(int8_onnx),
        "onnx_sha256": sha256_hex(int8_onnx),
        "fp32_onnx_bytes": len(fp32_onnx),
        "tier": saved.tier,
        "model": {
            "name": saved.spec.name.value,
            "width": saved.spec.width,
            "params": count_parameters(model),
            "sparsity": measure_sparsity(model),
            "weight_bits_trained": saved.weight_bits,
        },
        "input": _input_spec(saved, data),
        "output": {"name": OUTPUT_NAME, "shape": [None, saved.spec.num_classes]},
        "quantization": {
            "weights": "int8, symmetric, per output channel",
            "activations": "uint8, affine, per tensor, min-max calibrated",
            "calibration_samples": len(calibration),
            "format": "ONNX QDQ",
        },
        "dataset": data.name,
        "accuracy": {
            "fp32_torch": fp32.accuracy,
            "fake_quant_torch": fake_quant.accuracy,
            "artifact": onnx_run.accuracy,
            "test_samples": data.num_test,
        },
        "runtime": {"name": "onnxruntime", "min_version": "1.18"},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if source is not None:
        values["source_model"] = {
            "path": str(source.resolve()),
            "sha256": sha256_hex(source.read_bytes()),
        }
    manifest = sign_manifest(values, key)
    manifest_path = out_dir / f"{stem}.manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportResult(artifact, manifest_path, manifest)


def verify_artifact(
    manifest_path: Path,
    *,
    trusted_key: Ed25519PublicKey | None = None,
    model_path: Path | None = None,
    dataset: str | None = None,
    latency_runs: int = 200,
) -> VerifyReport:
    """Check and run an exported artifact; every failure is one ``ArtifactError`` line.

    Examples:
        >>> verify_artifact(Path("no/such.manifest.json"))
        Traceback (most recent call last):
        ...
        stamen.core.errors.ArtifactError: manifest not found: no/such.manifest.json
    """
    manifest = verify_manifest(read_manifest(manifest_path), trusted_key)
    artifact = manifest_path.parent / str(manifest["artifact"])
    try:
        artifact_bytes = artifact.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"artifact not found: {artifact}") from None
    if len(artifact_bytes) != manifest["bytes"] or sha256_hex(artifact_bytes) != manifest["sha256"]:
        raise ArtifactError(
            f"artifact {artifact.name} does not match its manifest (size or SHA-256 differs): "
            "it was changed or replaced after export"
        )
    onnx_bytes = unpack(artifact_bytes) if manifest["packing"] == "xz" else artifact_bytes
    if sha256_hex(onnx_bytes) != manifest["onnx_sha256"]:
        raise ArtifactError(f"the ONNX graph inside {artifact.name} does not match its manifest")
    data = _dataset(dataset or str(manifest["dataset"]))
    try:
        measured = measure_onnx(onnx_bytes, data.x_test, data.y_test, latency_runs)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ArtifactError(f"onnxruntime cannot run {artifact.name}: {error}") from None
    peak = peak_inference_bytes(onnx_bytes, data.x_test)
    reference = _reference_model(manifest, model_path)
    fp32 = (
        measure_torch(reference.build(), data.x_test, data.y_test, latency_runs)
        if reference is not None
        else None
    )
    return VerifyReport(
        manifest=manifest,
        artifact_bytes=len(artifact_bytes),
        artifact_accuracy=measured.accuracy,
        artifact_latency_ms_p50=measured.latency_ms_p50,
        peak_inference_bytes=peak,
        fp32_bytes=int(manifest["fp32_onnx_bytes"]),
        fp32_accuracy=fp32.accuracy if fp32 else None,
        fp32_latency_ms_p50=fp32.latency_ms_p50 if fp32 else None,
    )


def _reference_model(manifest: dict[str, Any], model_path: Path | None) -> SavedModel | None:
    if model_path is not None:
        return load_model_file(model_path)
    source = manifest.get("source_model")
    if not isinstance(source, dict):
        return None
    path = Path(str(source.get("path")))
    if not path.is_file() or sha256_hex(path.read_bytes()) != source.get("sha256"):
        return None
    return load_model_file(path)


def _dataset(spec: str | None) -> Dataset:
    if not spec:
        raise ConfigError("the model file names no dataset; pass --dataset")
    return load_dataset(spec)


def _input_spec(saved: SavedModel, data: Dataset) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": INPUT_NAME,
        "shape": [None, *saved.spec.input_shape],
        "dtype": "float32",
    }
    norm = data.normalization
    if norm is not None:
        spec["normalization"] = {
            "formula": "((raw - offset) / scale - mean) / std",
            "offset": norm.offset,
            "scale": norm.scale,
            "mean": np.asarray(norm.mean).ravel().tolist(),
            "std": np.asarray(norm.std).ravel().tolist(),
        }
    return spec
