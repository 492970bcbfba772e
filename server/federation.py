"""The server side of one federation: build the strategy, run the rounds, summarise.

The round loop itself is Flower's ``Strategy.start``; this module supplies the
model, the central evaluation and the reporting around it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from torch import nn

from stamen.client.trainer import EvalResult, evaluate
from stamen.compression import dense_nbytes, model_hash
from stamen.config import StamenConfig
from stamen.contract import TrainTask
from stamen.core.errors import ConfigError
from stamen.core.fleet import PolicyGrid, RoundTiming
from stamen.data import Dataset, load_dataset
from stamen.models import (
    ModelName,
    ModelSpec,
    build_model,
    count_parameters,
    exchanged_state,
    load_exchanged_state,
    to_channels_last,
)
from stamen.server.checkpoint import (
    Checkpoint,
    CheckpointStore,
    ResumedStrategy,
    restore_strategy,
    strategy_state,
)
from stamen.server.control import RunControl, RunState, StopRequested
from stamen.server.distillation import build_feddf, edge_metrics, final_models
from stamen.server.reporting import RoundRecord, RoundReporter
from stamen.strategies import CompressedFedAvg, FedBuff, RoundStats
from stamen.strategies import build_strategy as build_named_strategy
from stamen.strategies.deltas import to_array_record, to_numpy

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
    """The strategy this config describes (``strategy.name``), over compressed updates."""
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
    With ``checkpoints``, the state is saved after every round, and a run that
    finds a checkpoint resumes after its round instead of starting over.
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
    records: list[RoundRecord] = []
    round_started = [time.perf_counter()]
    initial = exchanged_state(model)
    resumed = checkpoints.load() if checkpoints is not None else None
    offset = resume(resumed, strategy, config) if resumed is not None else 0
    restored = [RoundRecord(**r) for r in resumed.records] if resumed is not None else []

    every = config.federation.eval_every
    last = [EvalResult(loss=float("nan"), accuracy=0.0, num_examples=0)]

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluated = server_round % every == 0 or server_round == config.federation.rounds
        if evaluated:
            load_state(model, arrays)
            last[0] = evaluate(model, x_test, y_test)
        result = last[0]
        if server_round == 0:
            reporter.on_start(config.federation.rounds, result.accuracy)
            for record in restored:
                records.append(record)
                reporter.on_round(record)
        else:
            record = round_record(
                strategy,
                server_round,
                result.accuracy,
                result.loss,
                time.perf_counter() - round_started[0],
                grid.last_timing() if isinstance(grid, PolicyGrid) else None,
            )
            if not evaluated:
                record = dataclasses.replace(record, evaluated=False)
            records.append(record)
            if checkpoints is not None:  # first, so a reported round is always a saved one
                save_checkpoint(checkpoints, server_round, arrays, strategy, records, config)
            reporter.on_round(record)
            if control is not None and server_round < config.federation.rounds:
                control.between_rounds(server_round)
        round_started[0] = time.perf_counter()
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    if resumed is not None:
        initial = resumed.arrays
    stopped: StopRequested | None = None
    try:
        result = (ResumedStrategy(strategy, offset) if offset else strategy).start(
            grid=grid,
            initial_arrays=to_array_record(initial),
            num_rounds=max(0, config.federation.rounds - offset),
            timeout=config.federation.round_timeout,
            evaluate_fn=lambda r, arrays: central_evaluate(r + offset if r else 0, arrays),
        )
        final_arrays = result.arrays
    except StopRequested as stop:
        # The model holds the last evaluated global model: the stopped run's result.
        stopped, final_arrays = stop, to_array_record(exchanged_state(model))
    except KeyboardInterrupt:
        if control is not None:
            control.finished(RunState.STOPPED, "interrupted (Ctrl-C)")
        raise
    except Exception as error:
        if control is not None:
            control.finished(RunState.FAILED, f"failed: {type(error).__name__}: {error}")
        raise
    summary = summarize(
        config,
        records,
        initial_bytes=dense_nbytes(initial),
        params=count_parameters(model),
        wall_seconds=time.perf_counter() - started,
    )
    summary["final_model_sha256"] = _final_hash(final_arrays)
    summary["strategy"] = "feddf" if config.distill.enabled else config.strategy.name.value
    if isinstance(strategy, FedBuff):
        summary["staleness_histogram"] = {
            str(k): v for k, v in strategy.staleness_histogram().items()
        }
    if stopped is not None:
        summary["stopped"] = True
    models = final_models(strategy, config, spec, to_numpy(final_arrays))
    if config.distill.edge_metrics:
        summary["edge"] = edge_metrics(models, dataset)
    on_models = getattr(reporter, "on_models", None)
    if on_models is not None:
        on_models(models)
    reporter.on_finish(summary)
    if control is not None:
        state = RunState.FINISHED if stopped is None else RunState.STOPPED
        control.finished(state, str(stopped) if stopped else f"finished {len(records)} rounds")
    return summary


def resume(checkpoint: Checkpoint, strategy: CompressedFedAvg, config: StamenConfig) -> int:
    """Restore the strategy from ``checkpoint``; returns the round to go on after."""
    saved = {k: v for k, v in checkpoint.config.items() if k != "federation"}
    current = {k: v for k, v in config.to_dict().items() if k != "federation"}
    if saved and saved != current:
        raise ConfigError(
            "the checkpoint was made with a different data, model or compression config; "
            "use the same config or a fresh state directory"
        )
    restore_strategy(strategy, checkpoint)
    LOG.warning("resuming from the checkpoint of round %d", checkpoint.round)
    return checkpoint.round


def save_checkpoint(
    store: CheckpointStore,
    server_round: int,
    arrays: ArrayRecord,
    strategy: CompressedFedAvg,
    records: list[RoundRecord],
    config: StamenConfig,
) -> None:
    """Checkpoint the state after ``server_round``."""
    state, masks = strategy_state(strategy)
    store.save(
        Checkpoint(
            round=server_round,
            arrays=to_numpy(arrays),
            masks=masks,
            strategy=state,
            records=[r.to_dict() for r in records],
            config=config.to_dict(),
        )
    )


def load_state(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load an ``ArrayRecord`` of exchanged tensors into ``model``."""
    load_exchanged_state(model, to_numpy(arrays))


def round_record(
    strategy: CompressedFedAvg,
    server_round: int,
    accuracy: float,
    loss: float,
    seconds: float,
    timing: RoundTiming | None = None,
) -> RoundRecord:
    """Combine the strategy's traffic stats, the grid's timing and the central evaluation."""
    # A round whose configure step never ran (no devices) still gets a zero record.
    stats = strategy.stats.get(server_round) or RoundStats(server_round)
    if isinstance(strategy, FedBuff):  # asynchronous: an aggregation is a round
        timing = strategy.timing(server_round)
    timing = timing or RoundTiming(dispatched=stats.sampled, participants=stats.sampled)
    return RoundRecord(
        round=server_round,
        accuracy=accuracy,
        loss=loss,
        sampled=stats.sampled,
        accepted=stats.accepted,
        rejected=len(stats.rejections),
        uplink_bytes=stats.uplink_bytes,
        downlink_bytes=stats.downlink_bytes,
        uplink_bytes_fp32=stats.uplink_bytes_fp32,
        downlink_bytes_fp32=stats.downlink_bytes_fp32,
        sparsity=stats.sparsity,
        train_loss=stats.train_loss,
        seconds=seconds,
        plain_clients=stats.plain_clients,
        rejections=[{"node_id": r.node_id, "reason": r.reason} for r in stats.rejections],
        staleness=list(getattr(strategy, "staleness", {}).get(server_round, [])),
        participants=timing.participants,
        stragglers=timing.stragglers,
        dropouts=timing.dropouts,
        surplus=timing.surplus,
        simulated_seconds=timing.seconds,
        clock=timing.clock,
        extra=dict(stats.extra),
    )


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
        "participants": sum(r.participants for r in records),
        "stragglers": sum(r.stragglers for r in records),
        "dropouts": sum(r.dropouts for r in records),
        "config": config.to_dict(),
    }


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


def _final_hash(arrays: ArrayRecord) -> str | None:
    return model_hash(to_numpy(arrays)) if len(arrays) else None
