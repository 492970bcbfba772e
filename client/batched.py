"""The ClientApp's training step for many simulated devices at once.

The simulation grid hands a worker's devices here in groups (``federation.device_batch``).
Each device is received, replied to and keeps its state exactly as
:func:`stamen.client.app.handle_train` does it; only the local training in between runs
for several devices together, through :func:`stamen.client.trainer.train_stacked`:

- every model whose layers have a grouped form (LeNet, MobileNet, the MLP; float or
  quantization-aware, pruned or not) as a :class:`~stamen.models.GroupedStack`;
- any other float model through ``torch.func.vmap`` (:class:`~stamen.models.VmapStack`);
- what neither can run, one device at a time.

Devices train together when they share the round's model and task (FedProx's ``mu``
included) and take the same number of SGD steps; a model with BatchNorm also needs the
same number of rows (its batch statistics would otherwise see the padding).

Devices of one round start from the same model, so a group builds it once and stacks it,
then reads each device's trained weights from the stack: no per-device model is built.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from flwr.app import Context, Message
from torch import nn

from stamen.client.app import Trained, TrainJob, finish_training, start_training, train_alone
from stamen.client.local_data import FleetData
from stamen.client.trainer import train_stacked
from stamen.compression import DecodedModel, QATConfig
from stamen.models import DeviceStack, GroupedStack, ModelSpec, NotStackable, VmapStack

LOG = logging.getLogger("stamen.client")

Outcome = Message | Exception
"""A device's reply, or the error its training raised."""

StackBuilder = Callable[[nn.Module, int, torch.device], DeviceStack]


def handle_train_batch(
    tasks: Sequence[tuple[Message, Context]], fleet: FleetData, device: str = "cpu"
) -> list[Outcome]:
    """Train every ``(message, context)`` and return the outcomes in the same order.

    ``device`` is where devices trained together compute (``"cuda"``: a GPU); devices that
    train alone always compute on the CPU.
    """
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
        trained.update(_train_group([jobs[i] for i in members], members, torch.device(device)))
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


def stacking_for(model: nn.Module, sample_shape: tuple[int, ...]) -> StackPlan | None:
    """How devices that start from ``model`` train together; ``None``: one at a time.

    Each form is tried on a copy with a two-row batch of zeros, so a model it cannot run is
    known before any device's data is at stake.
    """
    probe = torch.zeros(1, 2, *sample_shape)
    for builder in (GroupedStack.replicate, VmapStack.replicate):
        try:
            stack = builder(model, 1, torch.device("cpu"))
            with torch.no_grad():
                stack.forward(probe)
        except Exception as error:  # not stackable in this form: try the next
            LOG.debug("%s cannot train %s: %s", builder, type(model).__name__, error)
            continue
        return StackPlan(builder, stack.batch_coupled)
    return None


@dataclass(frozen=True)
class StackPlan:
    """A stacked form that runs a round's model, and whether it needs equal batches."""

    build: StackBuilder
    batch_coupled: bool


def _stacking_key(job: TrainJob, index: int) -> Hashable:
    task = job.task
    rows = int(job.local.x.shape[0])
    plan = _round_model(job).plan
    if plan is None or rows == 0:
        return ("alone", index)
    hyperparameters = (task.local_epochs, task.batch_size, task.lr, task.momentum)
    # Equal numbers of steps train together; equal rows where batch statistics need them.
    batches = ("rows", rows) if plan.batch_coupled else ("steps", math.ceil(rows / task.batch_size))
    sample = tuple(job.local.x.shape[1:])
    return (job.spec, task.qat, id(job.decoded), hyperparameters, task.proximal_mu, sample, batches)


def _train_group(
    jobs: list[TrainJob], indices: list[int], device: torch.device
) -> dict[int, Trained | Exception]:
    if len(jobs) > 1:
        task, cached = jobs[0].task, _round_model(jobs[0])
        try:
            if cached.plan is None or cached.model is None:
                raise NotStackable("no stacked form")
            stack = cached.plan.build(cached.model, len(jobs), device)
            results = train_stacked(
                stack,
                [job.local.x for job in jobs],
                [job.local.y for job in jobs],
                epochs=task.local_epochs,
                batch_size=task.batch_size,
                lr=task.lr,
                momentum=task.momentum,
                generators=[job.generator() for job in jobs],
                proximal_mu=task.proximal_mu,
            )
            states = stack.device_states()
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
    """The model every device of a round starts from, and how its devices stack, worked out
    once per process and round."""

    spec: ModelSpec | None = None
    qat: QATConfig | None = None
    decoded: DecodedModel | None = None
    model: nn.Module | None = None
    plan: StackPlan | None = None


_ROUND_MODEL = _RoundModel()


def _round_model(job: TrainJob) -> _RoundModel:
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
        cached.plan = stacking_for(cached.model, tuple(job.local.x.shape[1:]))
    return cached
