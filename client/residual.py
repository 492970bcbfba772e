"""A device's error-feedback residual (and DGC momentum), kept in its Flower ``Context``
between rounds.

It is the largest per-device state of a run, so it is stored compactly: one half-precision
array holding every tensor, in the order of the model's exchanged state, under a key that
spells out that layout (names and shapes). A residual whose layout does not match the
current model is ignored, as if the device were new. The residual is a running correction,
and fp16 keeps about three significant digits of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context

from stamen.contract import RESIDUAL_KEY


def store_residual(
    context: Context, residual: Mapping[str, np.ndarray], key: str = RESIDUAL_KEY
) -> None:
    """Keep ``residual`` in the device's state under ``key``, replacing the previous one."""
    flat = torch.cat(
        [torch.from_numpy(np.ascontiguousarray(v)).reshape(-1) for v in residual.values()]
    )
    # torch converts to half precision with vector instructions; numpy does it element by element.
    context.state[key] = ArrayRecord({_layout(residual): Array(flat.half().numpy())})


def load_residual(
    context: Context,
    delta: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    key: str = RESIDUAL_KEY,
) -> dict[str, np.ndarray] | None:
    """The error-feedback residual (or what else is stored under ``key``) from device
    state, if it fits ``delta``'s tensors.

    Residual mass on weights the server has since pruned is dropped: sending it
    would only spend top-k slots on values the server zeroes again.
    """
    record = context.state.array_records.get(key)
    layout = _layout(delta)
    if record is None or layout not in record:
        return None
    flat = torch.from_numpy(record[layout].numpy()).float().numpy()
    if flat.size != sum(value.size for value in delta.values()):
        return None
    residual: dict[str, np.ndarray] = {}
    offset = 0
    for name, value in delta.items():
        residual[name] = flat[offset : offset + value.size].reshape(value.shape)
        offset += value.size
    for name, mask in masks.items():
        if name in residual:
            residual[name] = residual[name] * mask
    return residual


def _layout(tensors: Mapping[str, np.ndarray]) -> str:
    return ";".join(f"{name}:{'x'.join(map(str, value.shape))}" for name, value in tensors.items())
