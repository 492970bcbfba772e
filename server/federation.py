"""The server side of one federation: build the strategy, run the rounds, summarise.

The round loop is :class:`~stamen.engine.RoundEngine`'s; this module is wiring:
it builds the model and strategy, restores a checkpoint, and hands the engine
the hooks (:class:`~stamen.server.round_hooks.FederationHooks`) that evaluate,
record, checkpoint and take operator control around each round.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from stamen.compression import dense_nbytes, model_hash
from stamen.config import StamenConfig
from stamen.contract import TrainTask, bytes_to_accuracy
from stamen.core import signal_name
from stamen.core.errors import ConfigError
from stamen.data import Dataset, load_dataset
from stamen.engine import RoundEngine
from stamen.models import (
    ModelName,
    ModelSpec,
    build_model,
    count_parameters,
    exchanged_state,
    to_channels_last,
)
from stamen.server.checkpoint import Checkpoint, CheckpointStore, setup_differences
from stamen.server.control import RunControl, RunState, apply_settings
from stamen.server.distillation import build_feddf, edge_metrics, final_models
from stamen.server.reporting import RoundRecord, RoundReporter
from stamen.server.round_hooks import FederationHooks
from stamen.strategies import CompressedFedAvg, FedBuff, build_private_strategy
from stamen.strategies import build_strategy as build_named_strategy
from stamen.transport.deltas import to_array_record, to_numpy

LOG = logging.getLogger("stamen.server")


def model_spec(config: StamenConfig, dataset: Dataset) -> ModelSpec:
    """The model architecture for this config and dataset."""
    model = config.training.model
    if model is not ModelName.MLP and len(dataset.input_shape) != 3:
        raise ConfigError(
            f"training.model {model.value} needs images, but dataset {dataset.name!r} holds "
            f"feature vectors of shape {dataset.input_shape}; use model mlp"
        )
    return ModelSpec(
        name=model,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        width=config.training.width,
    )


def train_task(config: StamenConfig) -> TrainTask:
    """The per-round task template the server sends to devices."""
    training = config.training
    return TrainTask(
        round_num=0,
        model=training.model,
        width=training.width,
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        momentum=training.momentum,
        seed=config.federation.seed,
        qat=config.qat.to_qat_config() if config.qat.enabled else None,
        uplink=config.uplink,
    )


def build_strategy(config: StamenConfig, spec: ModelSpec) -> CompressedFedAvg:
    """The strategy this config describes (``strategy.name``), over compressed updates;
    ``[privacy]`` turns FedAvg into its secure-aggregation or central-DP form."""
    if config.privacy.secure_aggregation or config.privacy.dp:
        return build_private_strategy(config, compressed_fedavg_args(config, spec))
    return build_named_strategy(config.strategy, **compressed_fedavg_args(config, spec))


def compressed_fedavg_args(config: StamenConfig, spec: ModelSpec) -> dict[str, Any]:
    """The keyword arguments of :class:`CompressedFedAvg` (and its subclasses) for ``config``."""
    federation = config.federation
    return {
        "model_factory": functools.partial(build_model, spec),
        "task": train_task(config),
        "downlink": config.downlink,
        "pruning": config.pruning,
        "devices_per_round": federation.devices_per_round,
        "seed": federation.seed,
        "plain_client_compat": federation.plain_client_compat,
        "max_update_bytes": federation.max_update_bytes,
        "over_selection": federation.over_selection,
        "deadline": federation.deadline or None,
        "defense": config.defense,
    }


def run_federation(
    grid: Grid,
    config: StamenConfig,
    reporter: RoundReporter,
    control: RunControl | None = None,
    *,
    checkpoints: CheckpointStore | None = None,
) -> dict[str, Any]:
    """Run every round of a federation on ``grid``; returns the summary.

    ``control``, where given, is consulted after each round (pause, stop, new
    settings); a stop ends the run early with ``"stopped": true`` in the summary.
    With ``checkpoints``, the whole state is saved after every round, and a run
    that finds a checkpoint resumes after its round instead of starting over.
    """
    started = time.perf_counter()
    dataset = load_dataset(config.data.dataset)
    spec = model_spec(config, dataset)
    model = build_model(spec, seed=config.federation.seed)
    strategy = (
        build_feddf(config, spec, dataset)
        if config.distill.enabled
        else build_strategy(config, spec)
    )
    if control is not None:
        grid = control.bind(strategy, grid, num_devices=config.federation.num_devices)
    x_test = torch.tensor(dataset.x_test)
    y_test = torch.tensor(dataset.y_test)
    if x_test.dim() == 4:
        x_test = x_test.to(memory_format=torch.channels_last)
        to_channels_last(model)
    initial = exchanged_state(model)
    resumed = checkpoints.load() if checkpoints is not None else None
    last_round = resume(resumed, strategy, config) if resumed is not None else 0
    hooks = FederationHooks(
        config=config,
        strategy=strategy,
        grid=grid,
        model=model,
        test_set=(x_test, y_test),
        reporter=reporter,
        control=control,
        checkpoints=checkpoints,
        resumed=resumed,
    )
    try:
        result = RoundEngine(strategy, hooks).run(
            grid,
            to_array_record(resumed.arrays if resumed is not None else initial),
            num_rounds=config.federation.rounds,
            first_round=last_round + 1,
            timeout=config.federation.round_timeout,
        )
    except KeyboardInterrupt as stop:
        if control is not None:
            control.finished(RunState.STOPPED, f"interrupted ({signal_name(stop)})")
        raise
    except Exception as error:
        if control is not None:
            control.finished(RunState.FAILED, f"failed: {type(error).__name__}: {error}")
        raise
    records = hooks.records
    summary = summarize(
        config,
        records,
        initial_bytes=dense_nbytes(initial),
        params=count_parameters(model),
        wall_seconds=time.perf_counter() - started,
    )
    summary["final_model_sha256"] = _final_hash(result.arrays)
    summary["strategy"] = "feddf" if config.distill.enabled else config.strategy.name.value
    if isinstance(strategy, FedBuff):
        summary["staleness_histogram"] = {
            str(k): v for k, v in strategy.staleness_histogram().items()
        }
    if result.stopped is not None:
        summary["stopped"] = True
    if result.refused:
        summary["refused_models"] = {str(r): reason for r, reason in result.refused.items()}
    models = final_models(strategy, config, spec, to_numpy(result.arrays))
    if config.distill.edge_metrics:
        summary["edge"] = edge_metrics(models, dataset)
    on_models = getattr(reporter, "on_models", None)
    if on_models is not None:
        on_models(models)
    reporter.on_finish(summary)
    if control is not None:
        state = RunState.FINISHED if result.stopped is None else RunState.STOPPED
        control.finished(state, result.stopped or f"finished {len(records)} rounds")
    return summary


def resume(checkpoint: Checkpoint, strategy: CompressedFedAvg, config: StamenConfig) -> int:
    """Restore the strategy from ``checkpoint``; returns the round to go on after."""
    if differences := setup_differences(checkpoint.config, config.to_dict()):
        raise ConfigError(
            "the checkpoint was made with a different data, model or compression config "
            f"({'; '.join(differences[:3])}); use the same config or a fresh state directory"
        )
    try:
        strategy.load_state_dict(checkpoint.strategy)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            f"the checkpoint's strategy state does not fit this strategy ({error!r}); "
            "use a fresh state directory"
        ) from None
    LOG.warning("resuming from the checkpoint of round %d", checkpoint.round)
    if settings := checkpoint.engine.get("operator_settings"):
        apply_settings(strategy, settings)
        LOG.warning("the operator's settings of the stopped run still apply: %s", settings)
    return checkpoint.round


def summarize(
    config: StamenConfig,
    records: list[RoundRecord],
    *,
    wall_seconds: float,
    initial_bytes: int | None = None,
    params: int | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` content."""
    uplink = sum(r.uplink_bytes for r in records)
    downlink = sum(r.downlink_bytes for r in records)
    uplink_fp32 = sum(r.uplink_bytes_fp32 for r in records)
    downlink_fp32 = sum(r.downlink_bytes_fp32 for r in records)
    return {
        "final_accuracy": records[-1].accuracy if records else None,
        "best_accuracy": max((r.accuracy for r in records), default=None),
        "rounds": len(records),
        "num_devices": config.federation.num_devices,
        "devices_per_round": config.federation.devices_per_round,
        "uplink_bytes": uplink,
        "downlink_bytes": downlink,
        "uplink_bytes_fp32": uplink_fp32,
        "downlink_bytes_fp32": downlink_fp32,
        "uplink_compression": uplink_fp32 / uplink if uplink else None,
        "downlink_compression": downlink_fp32 / downlink if downlink else None,
        "rejected_updates": sum(r.rejected for r in records),
        "final_sparsity": records[-1].sparsity if records else 0.0,
        "model_parameters": params,
        "model_bytes_fp32": initial_bytes,
        "wall_seconds": wall_seconds,
        "simulated_seconds": records[-1].clock if records else 0.0,
        "time_to_accuracy": time_to_accuracy(records),
        "bytes_to_accuracy": accuracy_bytes(records),
        "participants": sum(r.participants for r in records),
        "stragglers": sum(r.stragglers for r in records),
        "dropouts": sum(r.dropouts for r in records),
        **privacy_summary(records),
        "config": config.to_dict(),
    }


def privacy_summary(records: list[RoundRecord]) -> dict[str, Any]:
    """Epsilon spent by the run (at its delta), where DP was on; nothing otherwise."""
    spent = [r.extra for r in records if "epsilon" in r.extra]
    if not spent:
        return {}
    return {"dp": {"epsilon": spent[-1]["epsilon"], "delta": spent[-1].get("dp_delta")}}


ACCURACY_TARGETS = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
"""Accuracies whose time-to-accuracy ``summary.json`` reports."""


def time_to_accuracy(records: list[RoundRecord]) -> dict[str, dict[str, float]]:
    """For each target reached: the first round at or above it, and its clock and wall time."""
    result: dict[str, dict[str, float]] = {}
    wall = 0.0
    for record in records:
        wall += record.seconds
        if not record.evaluated:
            continue
        for target in ACCURACY_TARGETS:
            key = f"{target:.2f}"
            if record.accuracy >= target and key not in result:
                result[key] = {
                    "round": record.round,
                    "simulated_seconds": record.clock,
                    "wall_seconds": wall,
                }
    return result


def accuracy_bytes(records: list[RoundRecord]) -> dict[str, dict[str, int]]:
    """For each target of :data:`ACCURACY_TARGETS` reached: the first round at or above it
    and the bytes each way sent until then (compare runs at one target: ``stamen simulate
    --sweep`` and ``benchmarks/compression_matrix.py`` do, against FP32 FedAvg's)."""
    rounds = [record.to_dict() for record in records]
    reached = {f"{target:.2f}": bytes_to_accuracy(rounds, target) for target in ACCURACY_TARGETS}
    return {key: value for key, value in reached.items() if value is not None}


def _final_hash(arrays: ArrayRecord) -> str | None:
    return model_hash(to_numpy(arrays)) if len(arrays) else None
