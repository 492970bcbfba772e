"""Benchmark: local training per device, one at a time against trained together, every model.

One process, torch on one thread (as in the simulation's workers), MNIST-shaped random
data, W1's local training (60 rows a device, batches of 20, one epoch, SGD 0.05). For
LeNet, MobileNet and the MLP, float (``fp32``) and quantization-aware with half the
weights pruned (``edge``), it times each form that can train the model:

- ``alone``: ``train_epochs`` on each device's own model, built as the ClientApp builds
  it (``starting_model``: the round's model copied, QAT and masks applied);
- ``grouped``: ``GroupedStack`` at the device batch the rule picks for the model;
- ``vmap``: ``VmapStack``, the generic path (float models without masks only);
- ``probe``: what a model that stacks in no form pays on top of training alone, once a
  round and worker (``stacking_for`` trying both forms).

Times are process CPU time per device (the median of 5 repeats), so a busy machine
slows them less than wall time. Beside them, the arithmetic: a device's local training in
GFLOP (forward and backward of the float model, ``torch.utils.flop_counter``), the rate
each form reaches, and this process's one-thread float32 matmul rate (1024 x 1024), the
most a CPU core gives: training together cannot be faster than that arithmetic at it.
Writes ``stacked_training.json`` and ``stacked_training.md`` into ``--out``
(``benchmarks/results``).

    python benchmarks/stacked_training.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stamen.client.batched import auto_device_batch, stacking_for
from stamen.client.trainer import train_epochs, train_stacked
from stamen.compression import QATConfig, apply_masks, compute_masks, prepare_qat
from stamen.models import (
    GroupedStack,
    ModelName,
    ModelSpec,
    VmapStack,
    build_model,
    to_channels_last,
)
from stamen.simulations.worker_process import keep_freed_memory

ROWS, BATCH, LR = 60, 20, 0.05
SHAPE = (1, 28, 28)


def float_model(name: str) -> nn.Module:
    return to_channels_last(build_model(ModelSpec(ModelName(name), SHAPE, num_classes=10), seed=0))


def starting_model(template: nn.Module, edge: bool, masks: Any) -> nn.Module:
    """A device's model as the ClientApp builds it: the round's model copied, then QAT and
    the server's masks."""
    model = copy.deepcopy(template)
    if edge:
        prepare_qat(model, QATConfig(weight_bits=8))
        apply_masks(model, masks)
    return model


def cpu_ms_per_device(run: Callable[[], object], devices: int, repeats: int) -> float:
    run()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return statistics.median(times) / devices * 1e3


def gflop_per_device(template: nn.Module) -> float:
    """One device's local training (60 rows in batches of 20), forward and backward."""
    model = copy.deepcopy(template)
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() * (ROWS // BATCH) / 1e9


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """This process's one-thread float32 matmul rate, by CPU time."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.process_time() - start) / 1e9


def measure(name: str, edge: bool, repeats: int) -> dict[str, Any]:
    template = float_model(name)
    masks = compute_masks(template, 0.5)
    model = starting_model(template, edge, masks)
    count = auto_device_batch(template, SHAPE, BATCH, devices=1000)
    generator = torch.Generator().manual_seed(0)
    xs = [torch.randn(ROWS, *SHAPE, generator=generator) for _ in range(count)]
    ys = [torch.randint(0, 10, (ROWS,), generator=generator) for _ in range(count)]
    generators = [torch.Generator().manual_seed(k) for k in range(count)]
    settings = {"epochs": 1, "batch_size": BATCH, "lr": LR}

    def alone() -> None:
        for k in range(count):
            device_model = starting_model(template, edge, masks)
            train_epochs(device_model, xs[k], ys[k], generator=generators[k], **settings)  # type: ignore[arg-type]

    def together(build: Callable[[nn.Module, int], Any]) -> Callable[[], None]:
        def run() -> None:
            stack = build(model, count)
            train_stacked(stack, xs, ys, generators=generators, **settings)  # type: ignore[arg-type]
            stack.device_states()

        return run

    row: dict[str, Any] = {"model": name, "preset": "edge" if edge else "fp32"}
    row["device_batch"] = count
    row["alone_ms"] = cpu_ms_per_device(alone, count, repeats)
    row["grouped_ms"] = cpu_ms_per_device(together(GroupedStack.replicate), count, repeats)
    if not edge:
        row["vmap_ms"] = cpu_ms_per_device(together(VmapStack.replicate), count, repeats)
    probe_model = starting_model(template, edge, masks)
    row["probe_ms_per_round"] = cpu_ms_per_device(lambda: stacking_for(probe_model, SHAPE), 1, 3)
    row["gflop_per_device"] = gflop_per_device(template)
    return row


def to_markdown(rows: list[dict[str, Any]], peak: float) -> str:
    lines = [
        "| model | preset | devices together | alone | grouped | vmap (generic) "
        "| no form: probe per round | GFLOP a device | GFLOP/s alone / grouped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        alone = row["alone_ms"]
        grouped, vmap = (_against(row.get(key), alone) for key in ("grouped_ms", "vmap_ms"))
        gflop = row["gflop_per_device"]
        lines.append(
            f"| {row['model']} | {row['preset']} | {row['device_batch']} | {alone:.2f} ms "
            f"| {grouped} | {vmap} | {row['probe_ms_per_round']:.1f} ms | {gflop:.3f} "
            f"| {gflop / alone * 1e3:.0f} / {gflop / row['grouped_ms'] * 1e3:.0f} |"
        )
    lines += [
        "",
        f"One-thread float32 matmul (1024 x 1024) in the same process: {peak:.0f} GFLOP/s. "
        "Trained together 3x faster than alone needs 3x the 'alone' rate.",
    ]
    return "\n".join(lines) + "\n"


def _against(value: float | None, alone: float) -> str:
    return "-" if value is None else f"{value:.2f} ms ({alone / value:.1f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet", "mobilenet", "mlp"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    rows = []
    for name in args.models:
        for edge in (False, True):
            row = measure(name, edge, args.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    peak = matmul_gflops()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"matmul_gflops_one_thread": peak, "rows": rows}
    (args.out / "stacked_training.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(rows, peak)
    (args.out / "stacked_training.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
