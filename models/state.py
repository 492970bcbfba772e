"""The tensors federated training exchanges, read from and written to a live model.

A model on a device may be plain, prepared for quantization-aware training, or carry
``torch.nn.utils.prune`` reparametrization (``weight_orig`` plus ``weight_mask``). The
exchanged state looks the same in all three cases: the plain model's state_dict keys, float32
values, the effective (masked) weight under ``x.weight``. Integer buffers such as BatchNorm's
``num_batches_tracked`` and device-local state such as QAT observer ranges are not exchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

DEVICE_LOCAL_ATTRIBUTE = "stamen_device_local"
"""A module whose attribute of this name is True holds state that never leaves the device
(for example QAT activation observers); its tensors and those of its children are skipped."""

RUNNING_STATISTICS = ("running_mean", "running_var")
"""Name endings of the exchanged buffers that estimate the data (BatchNorm's running
statistics) rather than being trained."""

_ORIG_SUFFIX = "_orig"
_MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class _ExchangedTensor:
    # `storage` is what a load writes into; `mask` is set when pruning reparametrizes it.
    storage: torch.Tensor
    mask: torch.Tensor | None

    def effective(self) -> torch.Tensor:
        return self.storage if self.mask is None else self.storage * self.mask


def exchanged_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Return float32 copies of the parameters and floating-point buffers training exchanges.

    Keys are the plain model's state_dict keys. They come module by module in registration
    order and alphabetically within a module, so the order depends only on the architecture,
    not on whether QAT or pruning is active. A pruned tensor is returned as its effective value
    (``weight_orig * weight_mask``) under its plain name.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> state = exchanged_state(build_model(ModelSpec("mlp", (24,), num_classes=7)))
        >>> list(state)[:2], state["hidden.1.weight"].dtype
        (['hidden.1.bias', 'hidden.1.weight'], dtype('float32'))
    """
    with torch.no_grad():
        return {
            name: tensor.effective().detach().to(device="cpu", dtype=torch.float32).numpy().copy()
            for name, tensor in _exchanged_tensors(model)
        }


def load_exchanged_state(model: nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Write exchanged tensors into ``model`` in place, converting to each tensor's dtype.

    ``tensors`` must hold exactly the keys ``exchanged_state(model)`` returns, with the same
    shapes; nothing is written unless all of them match. Into a pruned tensor the values go to
    ``weight_orig``, so the device's mask still applies and pruned weights stay zero.

    Raises:
        ValueError: A key is missing or unexpected, or an array has the wrong shape. The
            message names the key.

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> spec = ModelSpec("mlp", (24,), num_classes=7)
        >>> source, target = build_model(spec, seed=1), build_model(spec, seed=2)
        >>> load_exchanged_state(target, exchanged_state(source))
        >>> bool(torch.equal(source.classifier.weight, target.classifier.weight))
        True
    """
    targets = dict(_exchanged_tensors(model))
    missing = [name for name in targets if name not in tensors]
    if missing:
        raise ValueError(f"missing exchanged tensor {missing[0]!r} ({len(missing)} missing)")
    unexpected = [name for name in tensors if name not in targets]
    if unexpected:
        raise ValueError(f"unexpected exchanged tensor {unexpected[0]!r} for this model")
    for name, target in targets.items():
        shape = tuple(np.shape(tensors[name]))
        if shape != tuple(target.storage.shape):
            raise ValueError(
                f"exchanged tensor {name!r} has shape {shape}; the model expects "
                f"{tuple(target.storage.shape)}"
            )
    with torch.no_grad():
        for name, target in targets.items():
            source = np.asarray(tensors[name])
            if not source.flags.writeable:  # torch cannot wrap a read-only array
                source = source.copy()
            target.storage.copy_(torch.from_numpy(source))


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameter elements (pruned ones included).

    Examples:
        >>> from stamen.models import ModelSpec, build_model
        >>> count_parameters(build_model(ModelSpec("lenet", (1, 28, 28), num_classes=10)))
        20522
    """
    return sum(parameter.numel() for parameter in model.parameters())


def _exchanged_tensors(model: nn.Module) -> Iterator[tuple[str, _ExchangedTensor]]:
    # state_dict(keep_vars=True) holds the live parameters and persistent buffers, grouped
    # module by module in registration order.
    state = model.state_dict(keep_vars=True)
    local_prefixes = tuple(
        f"{name}."
        for name, module in model.named_modules()
        if getattr(module, DEVICE_LOCAL_ATTRIBUTE, False)
    )
    by_module: dict[str, dict[str, _ExchangedTensor]] = {}
    for key, tensor in state.items():
        if key.startswith(local_prefixes) or not tensor.is_floating_point():
            continue
        base = key.removesuffix(_ORIG_SUFFIX)
        if key.endswith(_MASK_SUFFIX) and key.removesuffix(_MASK_SUFFIX) + _ORIG_SUFFIX in state:
            continue
        mask = state.get(base + _MASK_SUFFIX) if key.endswith(_ORIG_SUFFIX) else None
        name = key if mask is None else base
        module_prefix = name.rpartition(".")[0]
        by_module.setdefault(module_prefix, {})[name] = _ExchangedTensor(tensor, mask)
    for tensors in by_module.values():
        for name in sorted(tensors):
            yield name, tensors[name]


def is_running_statistic(name: str) -> bool:
    """Whether the exchanged tensor ``name`` is a running statistic (:data:`RUNNING_STATISTICS`).

    Examples:
        >>> is_running_statistic("blocks.0.1.running_var"), is_running_statistic("fc.weight")
        (True, False)
    """
    return name.endswith(RUNNING_STATISTICS)
