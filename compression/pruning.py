"""Magnitude pruning with ``torch.nn.utils.prune`` and a gradual sparsity schedule.

A device computes boolean masks from its current weights (``compute_masks``), applies them as
``torch.nn.utils.prune`` reparametrization so that pruned weights stay zero while it trains
(``apply_masks``), and bakes them in before export (``remove_masks``). ``SparsitySchedule``
raises the target sparsity over rounds with the cubic ramp of Zhu & Gupta (2017), "To prune,
or not to prune".

Which weights are prunable: the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (QAT layers
included) except the one registered last, which in Stamen's models is the classifier. The
classifier is small, and pruning whole output channels of it would delete classes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from stamen.core.errors import ConfigError

MAX_TARGET_SPARSITY = 0.95


class PruningMethod(enum.StrEnum):
    """How weights are ranked for pruning.

    ``global``: smallest magnitudes across all prunable layers together. ``layer``: smallest
    magnitudes, the same fraction in every layer. ``structured``: whole output channels
    (rows of a Linear, filters of a conv) with the smallest L1 norm, the same fraction per layer.
    """

    GLOBAL = "global"
    LAYER = "layer"
    STRUCTURED = "structured"


_ALLOWED_METHODS = ", ".join(method.value for method in PruningMethod)


@dataclass(frozen=True)
class PruningConfig:
    """How far and how fast a model is pruned.

    Attributes:
        target_sparsity: Fraction of prunable weights that are zero at the end, in [0, 0.95].
        method: How weights are ranked; a plain string is accepted and converted.
        ramp_rounds: Rounds from ``start_round`` until the target is reached (>= 1).
        start_round: First round of the ramp (>= 1); sparsity is 0 up to and including it.

    Examples:
        >>> PruningConfig(target_sparsity=0.8, method="layer").method
        <PruningMethod.LAYER: 'layer'>
        >>> PruningConfig(target_sparsity=0.99)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: target_sparsity must be in [0, 0.95]; got 0.99
    """

    target_sparsity: float = 0.0
    method: PruningMethod = PruningMethod.GLOBAL
    ramp_rounds: int = 10
    start_round: int = 1

    def __post_init__(self) -> None:
        target = self.target_sparsity
        if (
            isinstance(target, bool)
            or not isinstance(target, int | float)
            or not 0 <= target <= MAX_TARGET_SPARSITY
        ):
            raise ConfigError(
                f"target_sparsity must be in [0, {MAX_TARGET_SPARSITY}]; got {target!r}"
            )
        object.__setattr__(self, "method", _pruning_method(self.method))
        for field in ("ramp_rounds", "start_round"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be an integer >= 1; got {value!r}")


class SparsitySchedule:
    """The sparsity to prune to in each round: a cubic ramp from 0 to the target.

    ``s(t) = target * (1 - (1 - p)**3)`` with ``p = (t - start_round) / ramp_rounds`` clipped to
    [0, 1]. It is 0 up to ``start_round``, exactly the target from ``start_round + ramp_rounds``
    on, and never decreases: most weights go early, while the network can still recover.

    Examples:
        >>> schedule = SparsitySchedule(PruningConfig(0.8, ramp_rounds=4, start_round=1))
        >>> [round(schedule.sparsity_at(r), 3) for r in range(1, 7)]
        [0.0, 0.463, 0.7, 0.788, 0.8, 0.8]
    """

    def __init__(self, config: PruningConfig) -> None:
        self.config = config

    def sparsity_at(self, round_num: int) -> float:
        """Return the target sparsity for federated round ``round_num``."""
        elapsed = round_num - self.config.start_round
        progress = min(max(elapsed / self.config.ramp_rounds, 0.0), 1.0)
        return self.config.target_sparsity * (1.0 - (1.0 - progress) ** 3)


def prunable_parameters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``("module.path.weight", module)`` for each prunable layer, in model order.

    These are all ``nn.Conv2d`` and ``nn.Linear`` layers except the one registered last (the
    classifier).

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> model = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10))
        >>> [name for name, _ in prunable_parameters(model)]
        ['conv1.weight', 'conv2.weight', 'fc1.weight']
    """
    layers: list[tuple[str, nn.Module]] = [
        (f"{path}.weight" if path else "weight", module)
        for path, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    return layers[:-1]


def compute_masks(
    model: nn.Module, sparsity: float, method: PruningMethod | str = PruningMethod.GLOBAL
) -> dict[str, np.ndarray]:
    """Rank the prunable weights by magnitude and return boolean masks (True = kept).

    The model is not changed: the ``torch.nn.utils.prune`` functions run on detached copies of
    the effective weights. Weights that are already exactly zero (pruned earlier) stay pruned,
    so masks computed along a rising schedule only ever lose entries. With ``structured``, a
    channel that is entirely zero stays pruned.

    Args:
        model: Plain, QAT-prepared, or already pruned.
        sparsity: Fraction of weights (``global``, ``layer``) or of output channels
            (``structured``) to prune, in [0, 1].
        method: How to rank them.

    Returns:
        One mask per prunable weight, keyed ``"module.path.weight"``, shaped like the weight.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> model = build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10), seed=0)
        >>> masks = compute_masks(model, 0.75, "global")
        >>> measure_sparsity(masks)  # the fraction of False entries
        0.75
    """
    method = _pruning_method(method)
    if isinstance(sparsity, bool) or not 0 <= sparsity <= 1:
        raise ConfigError(f"sparsity must be in [0, 1]; got {sparsity!r}")
    layers = prunable_parameters(model)
    holders = [_WeightHolder(_effective_weight(module)) for _, module in layers]
    targets = [(holder, "weight") for holder in holders]
    if method is PruningMethod.GLOBAL:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for holder in holders:
        if method is PruningMethod.LAYER:
            prune.l1_unstructured(holder, "weight", amount=sparsity)
        elif method is PruningMethod.STRUCTURED:
            prune.ln_structured(holder, "weight", amount=sparsity, n=1, dim=0)
    masks: dict[str, np.ndarray] = {}
    for (name, _), holder in zip(layers, holders, strict=True):
        nonzero = holder.weight_orig != 0
        if method is PruningMethod.STRUCTURED:
            channel_alive = nonzero.reshape(nonzero.shape[0], -1).any(dim=1)
            nonzero = channel_alive.reshape(-1, *([1] * (nonzero.dim() - 1))).expand_as(nonzero)
        masks[name] = ((holder.weight_mask != 0) & nonzero).cpu().numpy()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, np.ndarray]) -> None:
    """Apply masks with ``torch.nn.utils.prune.custom_from_mask``: pruned weights become zero.

    While the masks are on, the weight is ``weight_orig * weight_mask``, so pruned entries get
    zero gradient and stay exactly zero through training. A layer that already carries a mask
    has it baked in and replaced by the new one. Layers absent from ``masks`` are left alone.
    As with any ``torch.nn.utils.prune`` reparametrization, ``copy.deepcopy`` of the model
    fails after a forward pass until ``remove_masks`` is called.

    Raises:
        ValueError: A key is not a prunable weight of this model, or a mask has the wrong
            shape. The message names the key.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> model = build_model(ModelSpec("mlp", (8,), num_classes=3), seed=0)
        >>> apply_masks(model, compute_masks(model, 0.5))
        >>> measure_sparsity(model)
        0.5
    """
    layers = dict(prunable_parameters(model))
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"mask {name!r} is not a prunable weight of this model")
        expected = tuple(_effective_weight(layers[name]).shape)
        if tuple(np.shape(mask)) != expected:
            raise ValueError(f"mask {name!r} has shape {np.shape(mask)}; expected {expected}")
    for name, mask in masks.items():
        module = layers[name]
        if _is_reparametrized(module, "weight"):
            prune.remove(module, "weight")
        weight = _effective_weight(module)
        # In the weight's own memory format: the masked weight, and with it the layer's
        # output, then stays channels-last, where CPU convolutions and pooling are fastest.
        kept = torch.empty_like(weight, dtype=torch.bool).copy_(
            torch.as_tensor(np.asarray(mask, dtype=bool))
        )
        prune.custom_from_mask(module, "weight", kept)


def remove_masks(model: nn.Module) -> None:
    """Bake every pruning mask into its tensor: plain ``weight`` parameters again, zeros kept.

    The parameter objects stay the same, so an existing optimizer keeps working.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> model = build_model(ModelSpec("mlp", (8,), num_classes=3), seed=0)
        >>> apply_masks(model, compute_masks(model, 0.5))
        >>> remove_masks(model)
        >>> sorted(name for name, _ in model.named_parameters())[:2], measure_sparsity(model)
        (['classifier.bias', 'classifier.weight'], 0.5)
    """
    for module in model.modules():
        names = [name for name, _ in module.named_parameters(recurse=False)]
        for name in names:
            base = name.removesuffix("_orig")
            if name != base and _is_reparametrized(module, base):
                prune.remove(module, base)


def measure_sparsity(
    model_or_tensors: nn.Module | Mapping[str, np.ndarray | torch.Tensor],
    names: Iterable[str] | None = None,
) -> float:
    """Return the fraction of exact zeros among the named weights.

    Args:
        model_or_tensors: A model (its effective, masked weights are counted) or a mapping of
            name to array, such as ``exchanged_state(model)``.
        names: Which weights to count. By default, for a model its prunable weights and for a
            mapping every entry; pass the names from ``prunable_parameters`` to count only
            prunable weights of a mapping.

    Raises:
        ValueError: A name is not in the model's prunable weights or in the mapping.

    Examples:
        >>> measure_sparsity({"w": np.array([[0.0, 1.0], [0.0, 2.0]])})
        0.5
    """
    if isinstance(model_or_tensors, nn.Module):
        tensors: Mapping[str, np.ndarray | torch.Tensor] = {
            name: _effective_weight(module)
            for name, module in prunable_parameters(model_or_tensors)
        }
    else:
        tensors = model_or_tensors
    selected = list(tensors) if names is None else list(names)
    zeros = total = 0
    for name in selected:
        if name not in tensors:
            raise ValueError(f"cannot measure sparsity of {name!r}: no such weight")
        value = tensors[name]
        if isinstance(value, torch.Tensor):
            zeros += int((value.detach() == 0).sum())
            total += value.numel()
        else:
            array = np.asarray(value)
            zeros += int(np.count_nonzero(array == 0))
            total += array.size
    return zeros / total if total else 0.0


class _WeightHolder(nn.Module):
    """A throwaway module that lets the ``prune`` functions rank a copy of a weight."""

    weight_orig: torch.Tensor
    weight_mask: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        # Contiguous: global ranking flattens every weight with view(-1), which a
        # channels-last weight does not allow.
        copy = weight.detach().clone(memory_format=torch.contiguous_format)
        self.weight = nn.Parameter(copy, requires_grad=False)


def _pruning_method(method: str) -> PruningMethod:
    try:
        return PruningMethod(method)
    except ValueError:
        raise ConfigError(f"method must be one of {_ALLOWED_METHODS}; got {method!r}") from None


def _is_reparametrized(module: nn.Module, name: str) -> bool:
    # torch.nn.utils.prune stores the raw tensor as `<name>_orig` and the mask as `<name>_mask`.
    return hasattr(module, name + "_orig") and hasattr(module, name + "_mask")


def _effective_weight(module: nn.Module) -> torch.Tensor:
    # `module.weight` is only refreshed by the prune hook on the next forward, so an optimizer
    # step leaves it stale; recompute it from the reparametrization.
    if not _is_reparametrized(module, "weight"):
        return _tensor_attribute(module, "weight")
    return _tensor_attribute(module, "weight_orig") * _tensor_attribute(module, "weight_mask")


def _tensor_attribute(module: nn.Module, name: str) -> torch.Tensor:
    tensor = getattr(module, name)
    assert isinstance(tensor, torch.Tensor)
    return tensor
