"""The ClientApp's training step for many simulated devices at once.

The simulation grid hands a worker's devices here in groups (``federation.device_batch``).
Each device is received, replied to and keeps its state exactly as
:func:`stamen.client.app.handle_train` does it; only the local training in between runs
for several devices together, through :func:`stamen.client.trainer.train_stacked`, where the
maths allows it: LeNets (float, or quantization-aware and pruned) with the same task and the
same number of examples. Every other device trains on its own.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence

from flwr.app import Context, Message
from torch import nn

from stamen.client.app import TrainJob, finish_training, start_training, train_alone
from stamen.client.local_data import FleetData
from stamen.client.trainer import TrainResult, train_stacked
from stamen.compression.stacked_qat import StackedQATLeNet
from stamen.models.stacked import StackedLeNet

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
    results: dict[int, TrainResult | Exception] = {}
    for members in groups.values():
        results.update(_train_group([jobs[i] for i in members], members))
    for index, job in jobs.items():
        result = results[index]
        if isinstance(result, Exception):
            outcomes[index] = result
            continue
        try:
            outcomes[index] = finish_training(job, result)
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
    task, stacking = job.task, stacking_for(job.model)
    if stacking is None or task.proximal_mu > 0:
        return ("alone", index)
    hyperparameters = (task.local_epochs, task.batch_size, task.lr, task.momentum)
    masked = bool(job.decoded.masks)
    shape = tuple(job.local.x.shape)
    return (stacking, task.model, task.width, task.qat, masked, hyperparameters, shape)


def _train_group(jobs: list[TrainJob], indices: list[int]) -> dict[int, TrainResult | Exception]:
    if len(jobs) > 1:
        task = jobs[0].task
        try:
            results = train_stacked(
                [job.model for job in jobs],
                [job.local.x for job in jobs],
                [job.local.y for job in jobs],
                epochs=task.local_epochs,
                batch_size=task.batch_size,
                lr=task.lr,
                momentum=task.momentum,
                generators=[job.generator() for job in jobs],
                stacking=stacking_for(jobs[0].model) or StackedLeNet,
            )
            return dict(zip(indices, results, strict=True))
        except Exception:
            # The models are untouched until stacked training ends: train them one by one.
            LOG.debug("stacked training failed; training alone", exc_info=True)
    outcomes: dict[int, TrainResult | Exception] = {}
    for index, job in zip(indices, jobs, strict=True):
        try:
            outcomes[index] = train_alone(job)
        except Exception as error:
            outcomes[index] = error
    return outcomes
