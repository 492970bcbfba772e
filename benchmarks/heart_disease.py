"""Heart disease, four hospitals: the federation beside pooled training of the same model.

FLamby compares each federated strategy on Fed-Heart-Disease with training on the union of
the four centres' training splits ("pooled"). This does the same for Stamen: the federated
run is ``stamen simulate --dataset heart-disease`` on its derived defaults (one device per
hospital, all four a round), and the pooled run trains the same MLP, from the same initial
weights, with the same SGD batch size and learning rate on the pooled training rows
(normalised with pooled statistics, as FLamby's pooled setting), for as many epochs as
each hospital trains over the whole federation (rounds x local epochs). Both are scored
on the union of the four test splits.

    .venv/bin/python benchmarks/heart_disease.py --preset fp32 --rounds 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import torch

from stamen.client.trainer import evaluate, train_epochs
from stamen.config import StamenConfig, load_config
from stamen.data.heart import pooled_heart_disease
from stamen.models import ModelSpec, build_model


def federated(config: StamenConfig) -> float:
    """Final central accuracy of the federation ``config`` describes."""
    from stamen.launch import simulate

    return float(simulate(config)["final_accuracy"])


def pooled_baseline(config: StamenConfig) -> float:
    """Accuracy of the config's model trained centrally on the union of the training splits."""
    data = pooled_heart_disease()
    training = config.training
    spec = ModelSpec(
        name=training.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        width=training.width,
    )
    model = build_model(spec, seed=config.federation.seed)
    generator = torch.Generator().manual_seed(config.federation.seed)
    train_epochs(
        model,
        torch.from_numpy(data.x_train),
        torch.from_numpy(data.y_train),
        epochs=config.federation.rounds * training.local_epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        momentum=training.momentum,
        generator=generator,
    )
    return evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fp32", choices=["fp32", "edge"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.ERROR)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        config = load_config(
            overrides={
                "preset": args.preset,
                "dataset": "heart-disease",
                "rounds": args.rounds,
                "seed": seed,
            }
        )
        rows.append(
            {
                "seed": seed,
                "federated": federated(config),
                "pooled": pooled_baseline(config),
                "epochs": config.federation.rounds * config.training.local_epochs,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in ("federated", "pooled")}
    print(
        f"heart-disease, {args.preset}, {args.rounds} rounds, seeds {args.seeds}: "
        f"federated {mean['federated']:.2%}, pooled {mean['pooled']:.2%}"
    )


if __name__ == "__main__":
    main()
