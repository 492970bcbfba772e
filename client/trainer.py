"""Local training and evaluation of a (possibly quantization-aware, pruned) model.

Plain PyTorch loops over in-memory tensors: device datasets are small, and a
``DataLoader`` costs more than the training itself at this size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stamen.models import DeviceStack


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
    stack: DeviceStack,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    generators: Sequence[torch.Generator],
    proximal_mu: float = 0.0,
) -> list[TrainResult]:
    """:func:`train_epochs` for the ``stack.count`` devices of ``stack`` at once.

    Each device keeps its own data, its own shuffling (``generators[k]``, drawn exactly as
    ``train_epochs`` draws it), its own SGD state and its own FedProx anchor, and its loss is
    its own batch mean, so device ``k`` ends where ``train_epochs`` on its own model would, to
    float rounding. Devices may hold different numbers of examples when they take the same
    number of steps an epoch (``ceil(n / batch_size)``): a shorter last batch is padded with
    copies of the device's own rows that count for nothing (copies leave a batch's extremes,
    which QAT observes, as they were). A stack whose layers mix a batch's rows
    (``batch_coupled``: BatchNorm) needs equal numbers. ``stack`` is trained in place: read
    the devices' weights with its ``device_states()``.
    """
    count = stack.count
    sizes = [int(x.shape[0]) for x in xs]
    steps = {math.ceil(n / batch_size) for n in sizes}
    if len(xs) != count or len(ys) != count or len(generators) != count or min(sizes) < 1:
        raise ValueError("train_stacked needs one non-empty data set and generator per device")
    if len(steps) != 1:
        raise ValueError("devices trained together must take the same number of steps")
    ragged = len(set(sizes)) > 1
    if ragged and stack.batch_coupled:
        raise ValueError("devices whose layers mix a batch's rows need the same number of rows")
    parameters = stack.parameters()
    device = parameters[0].device
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum)
    anchors = [p.detach().clone() for p in parameters] if proximal_mu > 0 else []
    x_all, y_all = _padded(xs, device), _padded(ys, device)
    rows = torch.arange(count, device=device).unsqueeze(1)
    counts = torch.tensor(sizes, dtype=torch.float32, device=device)
    last_epoch_loss = torch.zeros(count, device=device)
    for _ in range(epochs):
        orders = [torch.randperm(n, generator=g) for n, g in zip(sizes, generators, strict=True)]
        stacked_orders = None if ragged else torch.stack(orders).to(device)
        total = torch.zeros(count, device=device)
        for start in range(0, max(sizes), batch_size):
            if stacked_orders is not None:
                batch, weights = stacked_orders[:, start : start + batch_size], None
            else:
                batch, weights = _ragged_batch(orders, start, batch_size)
                batch = batch.to(device)
            logits = stack.forward(x_all[rows, batch])
            per_example = F.cross_entropy(
                logits.flatten(0, 1), y_all[rows, batch].flatten(), reduction="none"
            ).view(count, -1)
            taken: torch.Tensor | int
            if weights is None:
                taken = batch.shape[1]
                losses = per_example.mean(dim=1)
            else:
                weights = weights.to(device)
                taken = weights.sum(dim=1)
                losses = (per_example * weights).sum(dim=1) / taken
            if anchors:  # FedProx (Li et al. 2020), each device towards its own start
                losses = losses + proximal_terms(parameters, anchors, proximal_mu, count)
            optimizer.zero_grad(set_to_none=True)
            # The sum's gradient for each device's weights is that device's own loss gradient.
            losses.sum().backward()
            optimizer.step()
            total += losses.detach() * taken
        last_epoch_loss = total / counts
    return [
        TrainResult(loss=float(loss), num_examples=n)
        for loss, n in zip(last_epoch_loss.cpu(), sizes, strict=True)
    ]


def _padded(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The devices' data as one ``(K, max rows, ...)`` tensor; rows past a device's own
    are never read."""
    most = max(int(t.shape[0]) for t in tensors)
    if all(t.shape[0] == most for t in tensors):
        return torch.stack(list(tensors)).to(device)
    padded = tensors[0].new_zeros((len(tensors), most, *tensors[0].shape[1:]))
    for k, tensor in enumerate(tensors):
        padded[k, : tensor.shape[0]] = tensor
    return padded.to(device)


def _ragged_batch(
    orders: list[torch.Tensor], start: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each device's rows for the batch at ``start`` of its order, ``(K, B)``, padded with
    copies of its last one, and which rows count (``(K, B)`` of 0 and 1)."""
    slices = [order[start : start + batch_size] for order in orders]
    widest = max(len(s) for s in slices)
    batch = torch.stack([torch.cat([s, s[-1:].expand(widest - len(s))]) for s in slices])
    weights = torch.stack([(torch.arange(widest) < len(s)).to(torch.float32) for s in slices])
    return batch, weights


def proximal_terms(
    parameters: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], mu: float, count: int
) -> torch.Tensor:
    """Each device's ``mu/2 * ||w - anchor||^2`` over stacked, device-major parameters."""
    squares = [
        (p - a).pow(2).reshape(count, -1).sum(dim=1)
        for p, a in zip(parameters, anchors, strict=True)
    ]
    return 0.5 * mu * torch.stack(squares).sum(dim=0)


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
