"""Model fingerprints and dense byte accounting.

The hash names the exact float32 model a device trained on, so the server can
check that an update was computed against the model it sent, and a device can
check that the model it decoded is the one the server meant.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

ArrayOrShape = np.ndarray | Sequence[int]


def model_hash(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 hex digest over sorted names, shapes and little-endian float32 bytes.

    Each name, shape and payload is length-prefixed, so no two different models
    serialize to the same byte stream. Values are hashed as float32 whatever
    their dtype, because float32 is what travels and what the receiver rebuilds.

    Examples:
        >>> a = model_hash({"w": np.zeros((2, 2)), "b": np.ones(2)})
        >>> a == model_hash({"b": np.ones(2, np.float32), "w": np.zeros((2, 2), np.float32)})
        True
        >>> a == model_hash({"w": np.zeros(4), "b": np.ones(2)})
        False
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        encoded_name = name.encode("utf-8")
        digest.update(struct.pack("<Q", len(encoded_name)))
        digest.update(encoded_name)
        digest.update(struct.pack(f"<Q{array.ndim}Q", array.ndim, *array.shape))
        digest.update(array.tobytes())
    return digest.hexdigest()


def dense_nbytes(tensors_or_shapes: Mapping[str, ArrayOrShape] | Iterable[ArrayOrShape]) -> int:
    """Bytes the tensors would take as dense float32: the baseline for compression ratios.

    Accepts a mapping or an iterable of arrays or shapes.

    Examples:
        >>> dense_nbytes({"w": np.zeros((10, 3)), "b": (3,)})
        132
    """
    items = (
        tensors_or_shapes.values() if isinstance(tensors_or_shapes, Mapping) else tensors_or_shapes
    )
    total = 0
    for item in items:
        shape = item.shape if isinstance(item, np.ndarray) else tuple(item)
        total += 4 * math.prod(int(d) for d in shape)
    return total
