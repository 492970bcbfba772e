"""The Stamen ``ClientApp``: decode the global model, train with QAT and masks, encode the delta.

Use :func:`client_app` to build one for a simulated fleet, or the module-level
``app`` that ``flwr run`` loads, which reads the fleet from the run config.

Examples:
    >>> from stamen.client import FleetData, client_app
    >>> from stamen.config import DataSettings
    >>> app = client_app(FleetData(DataSettings(dataset="digits"), num_devices=10, seed=0))
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from stamen.client import secure_aggregation
from stamen.client.kept_model import keep, kept_hash, kept_payload, load_kept_payload
from stamen.client.local_data import FleetData, LocalData, device_data
from stamen.client.residual import load_residual, store_residual
from stamen.client.trainer import TrainResult, evaluate, train_epochs
from stamen.compression import (
    DecodedModel,
    UplinkCodec,
    apply_masks,
    decode_model,
    prepare_qat,
    remove_masks,
)
from stamen.config import from_run_config
from stamen.contract import (
    CONFIG_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    OUT_KEY,
    PAYLOAD,
    UPDATE_KEY,
    VELOCITY_KEY,
    TrainTask,
    payload_bytes,
    records_of,
)
from stamen.core.errors import ConfigError
from stamen.models import (
    ModelName,
    ModelSpec,
    build_model,
    exchanged_state,
    load_exchanged_state,
    to_channels_last,
)
from stamen.transport import model_delta


def client_app(fleet: FleetData | None = None) -> ClientApp:
    """Build the Stamen ``ClientApp``.

    Args:
        fleet: where a virtual device's data comes from. ``None`` reads it from
            the run config on each call, as ``flwr run`` requires.
    """
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context, fleet or fleet_from_context(context))

    @app.evaluate()
    def evaluate_global(message: Message, context: Context) -> Message:
        return handle_evaluate(message, context, fleet or fleet_from_context(context))

    # Secure aggregation's four exchanges (stamen.contract.secure, docs/privacy.md).
    app.query("secagg_advertise")(secure_aggregation.handle_advertise)
    app.query("secagg_share")(secure_aggregation.handle_share)
    app.query("secagg_unmask")(secure_aggregation.handle_unmask)

    @app.train("secagg")
    def secure_train(message: Message, context: Context) -> Message:
        job = start_training(message, context, fleet or fleet_from_context(context))
        return secure_aggregation.secure_upload(job, train_alone(job))

    return app


def fleet_from_context(context: Context) -> FleetData:
    """The fleet's data settings from Flower's run and node config."""
    run_config = tuple(sorted((k, v) for k, v in context.run_config.items() if k != OUT_KEY))
    return _fleet(run_config, context.node_config.get("num-partitions"))


@functools.lru_cache(maxsize=4)
def _fleet(run_config: tuple[tuple[str, Any], ...], num_partitions: object) -> FleetData:
    # Parsed once per process and run config, not once per message.
    config = from_run_config(dict(run_config))
    num_devices = num_partitions if isinstance(num_partitions, int) else None
    return FleetData(
        config.data,
        num_devices=num_devices or config.federation.num_devices,
        seed=config.federation.seed,
    )


def partition_id(context: Context) -> int:
    """This virtual device's partition, from Flower's node config."""
    value = context.node_config.get("partition-id")
    if not isinstance(value, int):
        raise ConfigError("node config has no integer 'partition-id'; is this a simulation?")
    return value


def receive_model(
    message: Message, local: LocalData, model_name: ModelName, width: float
) -> tuple[nn.Module, DecodedModel]:
    """Build the model architecture the task names and load the decoded global weights."""
    spec = local_spec(local, model_name, width)
    decoded = receive_global(message, spec)
    return global_model(spec, decoded), decoded


def local_spec(local: LocalData, model_name: ModelName, width: float) -> ModelSpec:
    """The spec of the model ``model_name`` at ``width`` for this device's data."""
    return ModelSpec(
        name=model_name, input_shape=local.input_shape, num_classes=local.num_classes, width=width
    )


def receive_global(
    message: Message, spec: ModelSpec, context: Context | None = None
) -> DecodedModel:
    """The global model in ``message``, decoded and verified against ``spec``'s shapes.

    A delta payload is added to the model the device kept in ``context``; without that
    model it is refused (``InvalidUpdate``), and the server sends the whole model next time.
    """
    array = records_of(message.content, ArrayRecord)[MODEL_KEY][PAYLOAD]
    held = kept_hash(context) if context is not None else None
    last = _LAST_RECEIVED
    if last.decoded is not None and last.array is array and last.spec == spec and last.held == held:
        # The devices of one round share one record, and so one Array, in this process.
        return last.decoded
    base = kept_payload(context) if context is not None else b""
    decoded = _decoded(payload_bytes(array), _exchanged_shapes(spec), base)
    # Devices that rebuilt the same model from different deltas share one object, so a
    # round's devices still train together (stacked training groups them by it).
    same = _BY_HASH.get(decoded.model_hash)
    if same is not None and same.keep == decoded.keep:
        decoded = same
    else:
        _BY_HASH.clear()
        _BY_HASH[decoded.model_hash] = decoded
    last.array, last.spec, last.decoded, last.held = array, spec, decoded, held
    return decoded


def _task_of(record: ConfigRecord) -> TrainTask:
    # The devices of one round share one config record in this process: parse it once.
    last = _LAST_TASK
    if last.task is None or last.record is not record:
        last.record, last.task = record, TrainTask.from_config_record(record)
    return last.task


@dataclass
class _Task:
    record: ConfigRecord | None = None
    task: TrainTask | None = None


_LAST_TASK = _Task()


@dataclass
class _Received:
    array: Array | None = None
    spec: ModelSpec | None = None
    decoded: DecodedModel | None = None
    held: str | None = None


_LAST_RECEIVED = _Received()
_BY_HASH: dict[str, DecodedModel] = {}


def global_model(spec: ModelSpec, decoded: DecodedModel) -> nn.Module:
    """A fresh ``spec`` model holding the decoded global weights."""
    # Its initial weights are overwritten at once: copying a template skips the init.
    model = copy.deepcopy(_template(spec))
    load_exchanged_state(model, decoded.tensors)
    return model


@functools.lru_cache(maxsize=8)
def _template(spec: ModelSpec) -> nn.Module:
    return to_channels_last(build_model(spec))


@functools.lru_cache(maxsize=8)
def _exchanged_shapes(spec: ModelSpec) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(t.shape)) for name, t in exchanged_state(_template(spec)).items())


@functools.lru_cache(maxsize=4)
def _decoded(
    payload: bytes, shapes: tuple[tuple[str, tuple[int, ...]], ...], base: bytes
) -> DecodedModel:
    # Every device a process runs in a round receives the same global model: decode and
    # verify it once. Its arrays are shared between those devices, so they are read-only.
    kept = load_kept_payload(base, shapes) if base else None
    decoded = decode_model(payload, expected_shapes=dict(shapes), base=kept)
    for array in decoded.tensors.values():
        array.flags.writeable = False
    return decoded


@dataclass
class TrainJob:
    """One device's round of training, between receiving the model and replying."""

    message: Message
    context: Context
    task: TrainTask
    partition: int
    local: LocalData
    spec: ModelSpec
    decoded: DecodedModel

    def generator(self) -> torch.Generator:
        """The device's data-shuffling stream for this round."""
        return torch.Generator().manual_seed(_device_seed(self.task, self.partition))

    def starting_model(self) -> nn.Module:
        """The model this device starts training from: the global weights, with the task's
        QAT layers and the server's pruning masks in place."""
        model = global_model(self.spec, self.decoded)
        if self.task.qat is not None:
            prepare_qat(model, self.task.qat)
        if self.decoded.masks:
            apply_masks(model, self.decoded.masks)
        return model


@dataclass(frozen=True)
class Trained:
    """A device's local training: its loss and example count, and its trained weights."""

    result: TrainResult
    state: dict[str, np.ndarray]
    """The trained model's exchanged state (pruned weights as ``weight_orig * mask``)."""


def handle_train(message: Message, context: Context, fleet: FleetData) -> Message:
    """One round of local training; replies with the encoded delta and metrics."""
    job = start_training(message, context, fleet)
    return finish_training(job, train_alone(job))


def start_training(message: Message, context: Context, fleet: FleetData) -> TrainJob:
    """Read the task, this device's data and the global model."""
    task = _task_of(records_of(message.content, ConfigRecord)[CONFIG_KEY])
    pid = partition_id(context)
    local = device_data(fleet, pid)
    spec = local_spec(local, task.model, task.width)
    decoded = receive_global(message, spec, context)
    if decoded.keep:
        keep(context, decoded)
    return TrainJob(message, context, task, pid, local, spec, decoded)


def train_alone(job: TrainJob) -> Trained:
    """The device's local epochs, on its own."""
    model = job.starting_model()
    result = train_epochs(
        model,
        job.local.x,
        job.local.y,
        epochs=job.task.local_epochs,
        batch_size=job.task.batch_size,
        lr=job.task.lr,
        momentum=job.task.momentum,
        generator=job.generator(),
        proximal_mu=job.task.proximal_mu,
    )
    if job.decoded.masks:
        remove_masks(model)
    return Trained(result, exchanged_state(model))


def finish_training(job: TrainJob, trained: Trained) -> Message:
    """Encode the trained model's delta (with error feedback) into the reply."""
    task, decoded, context = job.task, job.decoded, job.context
    delta = model_delta(trained.state, decoded.tensors)
    residual = load_residual(context, delta, decoded.masks) if task.uplink.error_feedback else None
    velocity = None
    if task.uplink.momentum > 0:
        velocity = load_residual(context, delta, decoded.masks, VELOCITY_KEY)
    encoded = UplinkCodec(task.uplink).encode(
        delta,
        round_num=task.round_num,
        base_model_hash=decoded.model_hash,
        residual=residual,
        rng=np.random.default_rng(_device_seed(task, job.partition)),
        velocity=velocity,
    )
    if encoded.residual is not None:
        store_residual(context, encoded.residual)
    if encoded.velocity is not None:
        store_residual(context, encoded.velocity, VELOCITY_KEY)
    content = RecordDict(
        {
            UPDATE_KEY: ArrayRecord({PAYLOAD: Array(np.frombuffer(encoded.payload, np.uint8))}),
            METRICS_KEY: MetricRecord(
                {NUM_EXAMPLES: trained.result.num_examples, "train-loss": trained.result.loss}
            ),
        }
    )
    return Message(content, reply_to=job.message)


def handle_evaluate(message: Message, context: Context, fleet: FleetData) -> Message:
    """Evaluate the global model on this device's data."""
    task = TrainTask.from_config_record(message.content.config_records[CONFIG_KEY])
    local = device_data(fleet, partition_id(context))
    model, _ = receive_model(message, local, task.model, task.width)
    result = evaluate(model, local.x, local.y)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: result.num_examples,
            "eval-loss": result.loss,
            "eval-accuracy": result.accuracy,
        }
    )
    return Message(RecordDict({METRICS_KEY: metrics}), reply_to=message)


def _device_seed(task: TrainTask, pid: int) -> int:
    # Distinct, reproducible streams per (run seed, round, device).
    return int(np.random.SeedSequence([task.seed, task.round_num, pid]).generate_state(1)[0])


app = client_app()
"""The app ``flwr run`` loads (``[tool.flwr.app.components]`` in pyproject.toml)."""
