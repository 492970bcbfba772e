"""``stamen plan-precision``: per-layer weight bits for a saved model under a byte budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from stamen.cli.output import console, fail
from stamen.cli.render import human_bytes
from stamen.core.errors import StamenError

CALIBRATION_SAMPLES = 512


def plan_table(plan: object, layer_weights: dict[str, int]) -> Table:
    """A precision plan as a table: bits, bytes and measured loss increase per layer."""
    from stamen.compression import PrecisionPlan

    assert isinstance(plan, PrecisionPlan)
    table = Table(title="Mixed-precision plan", header_style="bold", box=box.SIMPLE_HEAD)
    for column in ("layer", "weights", "bits", "bytes", "loss increase"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, bits in plan.bits.items():
        table.add_row(
            name,
            str(layer_weights[name]),
            str(bits),
            human_bytes(plan.layer_bytes[name]),
            f"{plan.sensitivity[name]:.5f}",
        )
    table.caption = (
        f"{human_bytes(plan.total_bytes)} of a {human_bytes(plan.budget_bytes)} budget · "
        f"predicted loss increase {plan.predicted_loss_increase:.4f}"
    )
    return table


def plan_precision_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A run directory (model.pt, or model-<tier>.pt with --tier) or a .pt file.",
            show_default=False,
        ),
    ],
    budget: Annotated[int, typer.Option("--budget", help="Size budget for the weights, in bytes.")],
    tier: Annotated[str | None, typer.Option(help="Plan this tier's student.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Calibration data (default: the model's dataset).")
    ] = None,
) -> None:
    """Give each layer 8, 4 or 2 weight bits by measured sensitivity, within --budget bytes.

    Example: [bold]stamen plan-precision runs/demo --budget 8000[/]
    """
    import torch

    from stamen.cli.export_command import resolve_model_path
    from stamen.client.trainer import evaluate
    from stamen.compression import apply_plan, plan_precision, quantizable_layers
    from stamen.data import load_dataset
    from stamen.export import calibration_samples
    from stamen.models import load_model_file

    try:
        saved = load_model_file(resolve_model_path(source, tier))
        if not (dataset or saved.dataset):
            fail("the model file names no dataset; pass --dataset")
            return
        data = load_dataset(dataset or str(saved.dataset))
        model = saved.build()
        x = torch.from_numpy(calibration_samples(data, CALIBRATION_SAMPLES))
        plan = plan_precision(model, x, budget)
    except StamenError as error:
        fail(str(error))
        return
    weights = {info.name: info.weights for info, _ in quantizable_layers(model)}
    console.print(plan_table(plan, weights))
    x_test, y_test = torch.tensor(data.x_test), torch.tensor(data.y_test)
    float_accuracy = evaluate(model, x_test, y_test).accuracy
    apply_plan(model, plan)
    planned_accuracy = evaluate(model, x_test, y_test).accuracy
    console.print(
        f"test accuracy: float {100 * float_accuracy:.2f}%, planned weights "
        f"{100 * planned_accuracy:.2f}% (fake-quantized weights, float activations)"
    )
