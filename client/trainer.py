"""Local training and evaluation of a (possibly quantization-aware, pruned) model.

Plain PyTorch loops over in-memory tensors: device datasets are small, and a
``DataLoader`` costs more than the training itself at this size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stamen.models import StackedLeNet


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training produced."""

    loss: float
    """Mean training loss over the last epoch."""
    num_examples: int


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of a model on a labelled set."""

    loss: float
    accuracy: float
    num_examples: int


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    generator: torch.Generator | None = None,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place with SGD on ``(x, y)`` for ``epochs`` passes.

    Pruning masks applied with ``torch.nn.utils.prune`` keep pruned weights at
    zero: their gradient flows to ``weight_orig`` only through the mask.
    ``proximal_mu`` > 0 adds FedProx's term ``mu/2 * ||w - w_start||^2``.

    Examples:
        >>> model = nn.Linear(4, 2)
        >>> x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
        >>> train_epochs(model, x, y, epochs=1, batch_size=8, lr=0.1).num_examples
        40
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    model.train()
    n = x.shape[0]
    last_epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            if anchor:  # FedProx (Li et al. 2020): pull towards the received global model
                loss = loss + proximal_term(model, anchor, proximal_mu)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.numel()
        last_epoch_loss = total / max(n, 1)
    return TrainResult(loss=last_epoch_loss, num_examples=n)


def train_stacked(
    stacked: StackedLeNet,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    generators: Sequence[torch.Generator],
) -> list[TrainResult]:
    """:func:`train_epochs` for the ``stacked.count`` devices of ``stacked`` at once.

    Each device keeps its own data, its own shuffling (``generators[k]``, drawn exactly as
    ``train_epochs`` draws it) and its own SGD state, and its loss is its own batch mean, so
    device ``k`` ends where ``train_epochs`` on its own model would, to float rounding. Every
    device must hold the same number of examples. ``stacked`` is trained in place: read the
    devices' weights with :meth:`~StackedLeNet.device_states` or
    :meth:`~StackedLeNet.write_back`.
    """
    count, n = stacked.count, xs[0].shape[0]
    if (
        len(xs) != count
        or any(x.shape[0] != n for x in xs)
        or len(ys) != count
        or len(generators) != count
    ):
        raise ValueError("train_stacked needs one data set per model, all of the same size")
    optimizer = torch.optim.SGD(stacked.parameters(), lr=lr, momentum=momentum)
    x_all, y_all = torch.stack(list(xs)), torch.stack(list(ys))
    rows = torch.arange(count).unsqueeze(1)
    last_epoch_loss = torch.zeros(count)
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
        total = torch.zeros(count)
        for start in range(0, n, batch_size):
            batch = orders[:, start : start + batch_size]
            logits = stacked.forward(x_all[rows, batch])
            per_example = F.cross_entropy(
                logits.flatten(0, 1), y_all[rows, batch].flatten(), reduction="none"
            )
            losses = per_example.view(count, -1).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            # The sum's gradient for each device's weights is that device's own loss gradient.
            losses.sum().backward()
            optimizer.step()
            total += losses.detach() * batch.shape[1]
        last_epoch_loss = total / max(n, 1)
    return [TrainResult(loss=float(loss), num_examples=n) for loss in last_epoch_loss]


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """``mu/2 * ||w - anchor||^2`` over the model's parameters (FedProx's proximal term)."""
    squares = [(p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)]
    return 0.5 * mu * torch.stack(squares).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    Batches of a few hundred keep a small CNN's activations in cache: MNIST's 10,000 test
    images evaluate twice as fast on a CPU as in batches of 2,048.
    """
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, n = 0.0, 0, x.shape[0]
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total_loss += float(loss_fn(logits, target))
        correct += int((logits.argmax(dim=1) == target).sum())
    return EvalResult(loss=total_loss / max(n, 1), accuracy=correct / max(n, 1), num_examples=n)
