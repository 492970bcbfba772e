"""The ClientApp's training step for many simulated devices at once.

The simulation grid hands a worker's devices here in groups (``federation.device_batch``).
Each device is received, replied to and keeps its state exactly as
:func:`stamen.client.app.handle_train` does it; only the local training in between runs
for several devices together, through :func:`stamen.client.trainer.train_stacked`, where the
maths allows it: LeNets (float, or quantization-aware and pruned) with the same task, the
same global model and the same number of examples. Every other device trains on its own.

Devices of one round start from the same model, so a group builds it once and stacks it
(:meth:`~stamen.models.StackedLeNet.replicate`), then reads each device's trained weights
from the stack: no per-device model is built.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from flwr.app import Context, Message
from torch import nn

from stamen.client.app import Trained, TrainJob, finish_training, start_training, train_alone
from stamen.client.local_data import FleetData
from stamen.client.trainer import train_stacked
from stamen.compression import DecodedModel, QATConfig, StackedQATLeNet
from stamen.models import ModelSpec, StackedLeNet

LOG = logging.getLogger("stamen.client")

Outcome = Message | Exception
"""A device's reply, or the error its training raised."""


def handle_train_batch(tasks: Sequence[tuple[Message, Context]], fleet: FleetData) -> list[Outcome]:
    """Train every ``(message, context)`` and return the outcomes in the same order."""
    outcomes: list[Outcome | None] = [None] * len(tasks)
    jobs: dict[int, TrainJob] = {}
    for index, (message, context) in enumerate(tasks):
        try:
            jobs[index] = start_training(message, context, fleet)
        except Exception as error:  # one device's bad task must not fail the others
            outcomes[index] = error
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, job in jobs.items():
        groups[_stacking_key(job, index)].append(index)
    trained: dict[int, Trained | Exception] = {}
    for members in groups.values():
        trained.update(_train_group([jobs[i] for i in members], members))
    for index, job in jobs.items():
        done = trained[index]
        if isinstance(done, Exception):
            outcomes[index] = done
            continue
        try:
            outcomes[index] = finish_training(job, done)
        except Exception as error:
            outcomes[index] = error
    return [outcome if outcome is not None else RuntimeError("no outcome") for outcome in outcomes]


def stacking_for(model: nn.Module) -> type[StackedLeNet] | None:
    """The stacked form that can train ``model`` with others; ``None``: it trains alone."""
    for stacking in (StackedLeNet, StackedQATLeNet):
        if stacking.accepts(model):
            return stacking
    return None


def _stacking_key(job: TrainJob, index: int) -> Hashable:
    task = job.task
    if task.proximal_mu > 0 or stacking_for(_round_model(job)) is None:
        return ("alone", index)
    hyperparameters = (task.local_epochs, task.batch_size, task.lr, task.momentum)
    shape = tuple(job.local.x.shape)
    return (job.spec, task.qat, id(job.decoded), hyperparameters, shape)


def _train_group(jobs: list[TrainJob], indices: list[int]) -> dict[int, Trained | Exception]:
    if len(jobs) > 1:
        task, model = jobs[0].task, _round_model(jobs[0])
        stacking = stacking_for(model)
        try:
            if stacking is None:
                raise ValueError(f"{type(model).__name__} does not stack")
            stacked = stacking.replicate(model, len(jobs))
            results = train_stacked(
                stacked,
                [job.local.x for job in jobs],
                [job.local.y for job in jobs],
                epochs=task.local_epochs,
                batch_size=task.batch_size,
                lr=task.lr,
                momentum=task.momentum,
                generators=[job.generator() for job in jobs],
            )
            states = stacked.device_states()
            return {
                index: Trained(result, state)
                for index, result, state in zip(indices, results, states, strict=True)
            }
        except Exception:
            LOG.debug("stacked training failed; training alone", exc_info=True)
    outcomes: dict[int, Trained | Exception] = {}
    for index, job in zip(indices, jobs, strict=True):
        try:
            outcomes[index] = train_alone(job)
        except Exception as error:
            outcomes[index] = error
    return outcomes


@dataclass
class _RoundModel:
    """The model every device of a round starts from, built once per process and round."""

    spec: ModelSpec | None = None
    qat: QATConfig | None = None
    decoded: DecodedModel | None = None
    model: nn.Module | None = None


_ROUND_MODEL = _RoundModel()


def _round_model(job: TrainJob) -> nn.Module:
    # Stacking copies the model's tensors and never writes to it: one copy serves the round.
    cached = _ROUND_MODEL
    if (
        cached.model is None
        or cached.decoded is not job.decoded
        or cached.spec != job.spec
        or cached.qat != job.task.qat
    ):
        cached.spec, cached.qat, cached.decoded = job.spec, job.task.qat, job.decoded
        cached.model = job.starting_model()
    return cached.model
