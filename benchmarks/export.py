"""Benchmark: INT8 artifacts of LeNet on MNIST, unpruned and pruned, against FP32.

Trains LeNet (W1) centrally on MNIST for ``--epochs``, then prunes it to each ``--sparsity``
with a short masked fine-tune, exports each to a packed INT8 ONNX artifact and verifies it:
size against the FP32 ONNX export, accuracy against the FP32 and fake-quantized PyTorch
model, batch-1 latency against FP32 PyTorch. Writes ``results.json`` and ``results.md``.

    python benchmarks/export.py --out runs/benchmark-export
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train, prune, export and verify; one row per sparsity."""
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stamen.client.trainer import train_epochs
    from stamen.compression import apply_masks, compute_masks, remove_masks
    from stamen.data import load_dataset
    from stamen.export import export_model, verify_artifact
    from stamen.models import (
        ModelName,
        ModelSpec,
        SavedModel,
        build_model,
        exchanged_state,
        save_model_file,
    )

    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    x, y = torch.tensor(data.x_train), torch.tensor(data.y_train)
    spec = ModelSpec(ModelName.LENET, data.input_shape, data.num_classes)
    key = Ed25519PrivateKey.generate()
    rows = []
    for sparsity in args.sparsity:
        model = build_model(spec, seed=args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        train_epochs(model, x, y, epochs=args.epochs, batch_size=32, lr=0.05, generator=generator)
        if sparsity > 0:
            apply_masks(model, compute_masks(model, sparsity))
            train_epochs(model, x, y, epochs=1, batch_size=32, lr=0.02, generator=generator)
            remove_masks(model)
        name = f"lenet-sparsity{int(100 * sparsity)}"
        source = args.out / f"{name}.pt"
        save_model_file(SavedModel(spec, exchanged_state(model), dataset=args.dataset), source)
        result = export_model(
            SavedModel(spec, exchanged_state(model), dataset=args.dataset),
            args.out,
            key,
            name=name,
            source=source,
        )
        report = verify_artifact(result.manifest_path, trusted_key=key.public_key())
        manifest = result.manifest
        rows.append(
            {
                "sparsity": manifest["model"]["sparsity"],
                "fp32_onnx_bytes": manifest["fp32_onnx_bytes"],
                "int8_onnx_bytes": manifest["onnx_bytes"],
                "artifact_bytes": manifest["bytes"],
                "ratio": manifest["fp32_onnx_bytes"] / manifest["bytes"],
                "fp32_accuracy": report.fp32_accuracy,
                "fake_quant_accuracy": manifest["accuracy"]["fake_quant_torch"],
                "artifact_accuracy": report.artifact_accuracy,
                "fp32_latency_ms_p50": report.fp32_latency_ms_p50,
                "artifact_latency_ms_p50": report.artifact_latency_ms_p50,
                "peak_inference_bytes": report.peak_inference_bytes,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table."""
    lines = [
        "| sparsity | INT8 ONNX | packed artifact | × smaller than FP32 ONNX | accuracy FP32 | "
        "fake-quant | artifact | artifact − fake-quant (points) | p50 FP32 torch | "
        "p50 INT8 onnxruntime |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {100 * r['sparsity']:.0f}% | {r['int8_onnx_bytes']:,} B | "
            f"{r['artifact_bytes']:,} B | {r['ratio']:.2f}x | {100 * r['fp32_accuracy']:.2f}% | "
            f"{100 * r['fake_quant_accuracy']:.2f}% | {100 * r['artifact_accuracy']:.2f}% | "
            f"{100 * (r['artifact_accuracy'] - r['fake_quant_accuracy']):+.2f} | "
            f"{r['fp32_latency_ms_p50']:.3f} ms | {r['artifact_latency_ms_p50']:.3f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-export"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    markdown = table(rows)
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
