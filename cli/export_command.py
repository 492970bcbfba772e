"""``stamen export``: a global or tier model to a signed INT8 artifact, or ``--verify`` one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from stamen.cli.output import console, fail
from stamen.cli.render import human_bytes
from stamen.core.errors import StamenError
from stamen.models import GLOBAL_MODEL_FILE, tier_model_file


def resolve_model_path(source: Path, tier: str | None) -> Path:
    """A model file from a run directory (``model.pt`` or ``model-<tier>.pt``) or a file.

    Examples:
        >>> resolve_model_path(Path("runs/demo"), "mcu").name
        'model-mcu.pt'
        >>> resolve_model_path(Path("my.pt"), None).name
        'my.pt'
    """
    if source.suffix == ".pt":
        return source
    return source / (tier_model_file(tier) if tier else GLOBAL_MODEL_FILE)


def export_table(report: object) -> Table:
    """The ``--verify`` comparison: FP32 PyTorch against the INT8 artifact in onnxruntime."""
    from stamen.export import VerifyReport

    assert isinstance(report, VerifyReport)
    manifest = report.manifest
    table = Table(
        title=f"Artifact {manifest['artifact']} (tier {manifest.get('tier') or 'global'})",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    for column in ("model", "runtime", "accuracy", "size", "× smaller", "latency p50 (batch 1)"):
        table.add_column(column, justify="right" if column != "model" else "left")
    fp32_accuracy = report.fp32_accuracy
    fp32_latency = report.fp32_latency_ms_p50
    table.add_row(
        "FP32",
        "PyTorch",
        "-" if fp32_accuracy is None else f"{100 * fp32_accuracy:.2f}%",
        human_bytes(report.fp32_bytes) + " (ONNX)",
        "1.0x",
        "-" if fp32_latency is None or math.isnan(fp32_latency) else f"{fp32_latency:.3f} ms",
    )
    fake_quant = manifest["accuracy"]["fake_quant_torch"]
    table.add_row("INT8 fake-quant", "PyTorch", f"{100 * fake_quant:.2f}%", "-", "-", "(at export)")
    table.add_row(
        "INT8 artifact",
        "onnxruntime",
        f"{100 * report.artifact_accuracy:.2f}%",
        human_bytes(report.artifact_bytes),
        f"{report.fp32_bytes / report.artifact_bytes:.1f}x",
        f"{report.artifact_latency_ms_p50:.3f} ms",
    )
    model = manifest["model"]
    table.caption = (
        f"{model['params']} params, {100 * model['sparsity']:.0f}% sparse · peak inference "
        f"memory {human_bytes(report.peak_inference_bytes)} · signature and SHA-256 verified"
    )
    return table


def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="A run directory (its model.pt, or model-<tier>.pt with --tier), a model "
            ".pt file, or with --verify a manifest .json.",
            show_default=False,
        ),
    ],
    tier: Annotated[str | None, typer.Option(help="Export this tier's student instead.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory.  \\[default: <run>/export]", show_default=False),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset for calibration and testing (default: the model's)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 signing key (PEM), made on first use.  "
            "\\[default: ~/.config/stamen/export-signing-key.pem]",
            show_default=False,
        ),
    ] = None,
    pack: Annotated[bool, typer.Option("--pack/--no-pack", help="xz-pack the artifact.")] = True,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Verify and run an exported artifact (SOURCE: manifest)."),
    ] = False,
    public_key: Annotated[
        Path | None,
        typer.Option(help="With --verify: the only signer to trust (PEM or hex)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="With --verify: the FP32 model to compare with (default: source)."),
    ] = None,
) -> None:
    """Export a global or tier model as a signed INT8 ONNX artifact, or --verify one.

    Example: [bold]stamen export runs/demo[/], then
    [bold]stamen export --verify runs/demo/export/global.manifest.json[/]
    """
    try:
        from stamen.export import (
            export_model,
            load_or_create_key,
            load_public_key,
            verify_artifact,
        )
    except ImportError as error:
        fail(f"export needs the export extra (pip install 'stamen[export]'): {error}")
        return
    try:
        if verify:
            trusted = load_public_key(public_key) if public_key else None
            report = verify_artifact(source, trusted_key=trusted, model_path=model, dataset=dataset)
            console.print(export_table(report))
            if trusted is None:
                console.print(
                    "[yellow]signer not pinned:[/] pass --public-key to trust only your key"
                )
            return
        from stamen.models import load_model_file

        model_path = resolve_model_path(source, tier)
        saved = load_model_file(model_path)
        signing_key, created = load_or_create_key(key)
        if created:
            console.print(f"made a new signing key: {key or '~/.config/stamen/'}")
        out_dir = out or (model_path.parent / "export")
        result = export_model(
            saved, out_dir, signing_key, dataset=dataset, packed=pack, source=model_path
        )
    except StamenError as error:
        fail(str(error))
        return
    manifest = result.manifest
    accuracy = manifest["accuracy"]
    console.print(
        f"[bold]{result.artifact}[/] · {human_bytes(manifest['bytes'])} "
        f"({manifest['fp32_onnx_bytes'] / manifest['bytes']:.2f}x smaller than FP32) · "
        f"accuracy {100 * accuracy['artifact']:.2f}% in onnxruntime, "
        f"{100 * accuracy['fake_quant_torch']:.2f}% fake-quantized, "
        f"{100 * accuracy['fp32_torch']:.2f}% FP32"
    )
    console.print(f"manifest: {result.manifest_path}")
