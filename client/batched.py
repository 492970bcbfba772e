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

import copy
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


GROUP_ACTIVATION_BYTES = 128 * 2**20
"""What one training step of a group may keep for its backward pass (see
:func:`auto_device_batch`)."""
MAX_DEVICE_BATCH = 32


def auto_device_batch(
    model: nn.Module, sample_shape: tuple[int, ...], batch_size: int, devices: int
) -> int:
    """How many devices a worker trains together, by one rule for every model and fleet.

    The largest power of two, at most :data:`MAX_DEVICE_BATCH`, whose group keeps at most
    :data:`GROUP_ACTIVATION_BYTES` of activations for one step's backward pass (measured
    on ``model`` with a batch of ``batch_size``), and that still cuts a round's ``devices``
    into four groups or more, so that the workers share a round evenly. It does not depend
    on the number of workers: which devices train together, and so the results, do not.
    ``model`` is the float architecture (a copy of it runs one batch).
    Per-device training time fell until then and rose after, measured at 4 to 64 devices
    (one thread, batches of 20 MNIST images): W1's LeNet (1.3 MiB a device: 32) 2.5 ms at
    16 and 2.2 at 32; the MLP (0.1 MiB: 32) 1.5 and 1.4; MobileNet (11 MiB: 8) 11.5 ms at
    8, 11.9 at 16 and 13.7 at 32.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> lenet = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10))
        >>> auto_device_batch(lenet, (1, 28, 28), 20, devices=1000)
        32
        >>> auto_device_batch(lenet, (1, 28, 28), 20, devices=40)
        8
    """
    probe = copy.deepcopy(model).train()
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        probe(torch.zeros(batch_size, *sample_shape))
    limits = (MAX_DEVICE_BATCH, GROUP_ACTIVATION_BYTES // max(saved, 1), devices // 4)
    return _power_of_two_at_most(max(1, min(limits)))


def _power_of_two_at_most(value: int) -> int:
    return 1 << (value.bit_length() - 1)


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
