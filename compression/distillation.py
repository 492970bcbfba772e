"""Knowledge distillation: the KD loss, ensemble soft targets, and a distillation loop.

KD loss: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531. The student matches the teacher's softened distribution,
``T**2 * KL(softmax(teacher / T) || softmax(student / T))``; the ``T**2`` keeps gradient
magnitudes comparable across temperatures.

Ensemble targets as in FedDF (Lin et al., 2020): the teacher is the mean of several models'
logits on the same unlabelled inputs. No labels are ever used here.

Examples:
    >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(kd_loss(logits, logits, temperature=3.0))
    0.0
    >>> float(kd_loss(torch.zeros(1, 3), logits, temperature=1.0)) > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from stamen.core.errors import ConfigError


@dataclass(frozen=True)
class DistillConfig:
    """How a student is fitted to soft targets.

    Attributes:
        temperature: Softmax temperature of the KD loss, > 0.
        steps: Optimizer steps (mini-batches) per distillation, >= 1.
        batch_size: Unlabelled samples per step, >= 1.
        lr: Adam learning rate, > 0.
        seed: Seeds the mini-batch order.

    Examples:
        >>> DistillConfig(temperature=0)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: temperature must be > 0; got 0
    """

    temperature: float = 3.0
    steps: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, minimum in (
            ("temperature", self.temperature, 0.0),
            ("lr", self.lr, 0.0),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= minimum:
                raise ConfigError(f"{name} must be > 0; got {value!r}")
        for name, count in (("steps", self.steps), ("batch_size", self.batch_size)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"{name} must be an integer >= 1; got {count!r}")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's KD loss, averaged over the batch: ``T**2 * KL(p_teacher || p_student)``."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode (the model's mode is restored).

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
        >>> logits = model_logits(model, torch.ones(5, 2), batch_size=2)
        >>> logits.shape, model.training  # dropout was off, and the mode is back
        (torch.Size([5, 3]), True)
    """
    was_training = model.training
    model.eval()
    outputs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0)


@torch.no_grad()
def ensemble_logits(
    models: Sequence[nn.Module], x: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """The (weighted) mean of the models' logits on ``x``: FedDF's ensemble teacher.

    Examples:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> x = torch.randn(4, 2)
        >>> bool(torch.allclose(ensemble_logits([a, b], x), (a(x) + b(x)) / 2))
        True
    """
    if not models:
        raise ValueError("ensemble_logits needs at least one model")
    shares = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    total = sum(shares)
    if len(shares) != len(models) or total <= 0:
        raise ValueError("weights must be one positive number per model")
    mean = torch.zeros(())
    for model, share in zip(models, shares, strict=True):
        mean = mean + model_logits(model, x) * (share / total)
    return mean


def distill(
    student: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, config: DistillConfig
) -> float:
    """Fit ``student`` in place to ``teacher_logits`` on unlabelled ``x``; returns the last loss.

    Adam over ``config.steps`` mini-batches drawn without replacement (reshuffled each pass).
    The student trains in train mode (BatchNorm statistics adapt to ``x``) and is left in eval
    mode.

    Examples:
        >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> x = torch.randn(256, 4)
        >>> target = teacher(x).detach()
        >>> before = float(kd_loss(student(x), target, 2.0).detach())
        >>> after = distill(student, x, target, DistillConfig(temperature=2.0, steps=300, lr=0.05))
        >>> after < before / 10
        True
    """
    if len(x) != len(teacher_logits):
        raise ValueError(f"{len(x)} inputs but {len(teacher_logits)} teacher rows")
    if len(x) == 0:
        raise ValueError("distill needs at least one unlabelled sample")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    student.train()
    order = torch.randperm(len(x), generator=generator)
    position = 0
    loss = torch.zeros(())
    for _ in range(config.steps):
        if position >= len(x):
            order = torch.randperm(len(x), generator=generator)
            position = 0
        batch = order[position : position + config.batch_size]
        position += config.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = kd_loss(student(x[batch]), teacher_logits[batch], config.temperature)
        loss.backward()
        optimizer.step()
    student.eval()
    return float(loss.detach())
