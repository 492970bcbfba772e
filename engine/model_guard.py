"""The last check before a new global model is applied and broadcast: is it a model at all?

Whatever a strategy computed (a mean, a median, a server optimiser's step, a
distilled teacher), a model with NaN or infinite weights, or one that moved
by more than ``EXPLOSION_RATIO`` times its own size in one round, is refused:
no training step does that, so it comes from a fault or an attack, and
devices must never receive it. The round then keeps its model.

Examples:
    >>> import numpy as np
    >>> from flwr.app import Array, ArrayRecord
    >>> old = ArrayRecord({"w": Array(np.ones(4, np.float32))})
    >>> refusal(old, ArrayRecord({"w": Array(np.full(4, 1.5, np.float32))})) is None
    True
    >>> refusal(old, ArrayRecord({"w": Array(np.array([1, 1, np.nan, 1], np.float32))}))
    "tensor 'w' holds NaN or infinite weights"
    >>> refusal(old, ArrayRecord({"w": Array(np.full(4, 1e3, np.float32))}))
    'the model moved by 2e+03, more than 10 times its norm (max(norm, 1) = 2)'
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord

EXPLOSION_RATIO = 10.0
"""A round may move the model by at most this many times ``max(its L2 norm, 1)``."""


def refusal(old: ArrayRecord, new: ArrayRecord) -> str | None:
    """Why ``new`` must not replace ``old`` as the global model, or ``None`` when it may."""
    moved_sq = size_sq = 0.0
    for name in new:
        value = new[name].numpy()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"tensor {name!r} holds NaN or infinite weights"
        if name not in old or value.dtype.kind != "f":
            continue
        before = old[name].numpy().astype(np.float64)
        if before.shape != value.shape:
            continue
        moved_sq += float(np.square(value.astype(np.float64) - before).sum())
        size_sq += float(np.square(before).sum())
    moved, scale = math.sqrt(moved_sq), max(math.sqrt(size_sq), 1.0)
    if moved > EXPLOSION_RATIO * scale:
        return (
            f"the model moved by {moved:.3g}, more than {EXPLOSION_RATIO:g} times its norm "
            f"(max(norm, 1) = {scale:.3g})"
        )
    return None
