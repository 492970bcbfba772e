"""How traffic is counted: the bytes of model data a message carries, the same on every grid.

Examples:
    >>> import numpy as np
    >>> from flwr.app import Array
    >>> array_nbytes(Array(np.zeros((10, 3), np.float32)))
    120
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from stamen.contract.task import records_of


def array_nbytes(array: Array) -> int:
    """Payload bytes of a Flower ``Array``, not counting its serialization header.

    Never more than the bytes the array really holds: a peer's declared shape and
    dtype cannot inflate the count.
    """
    try:
        declared = math.prod(int(d) for d in array.shape) * _itemsize(array.dtype)
    except (TypeError, ValueError, OverflowError):
        return len(array.data)
    return min(declared, len(array.data))


@functools.lru_cache(maxsize=64)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def message_nbytes(message: Message) -> int:
    """Bytes of model data in a message, either way: what every grid counts as traffic.

    Arrays count their payload, not Flower's serialization header, so the figure is
    the same on every grid and runtime; an error reply carries none.
    """
    if message.has_error():
        return 0
    return sum(
        array_nbytes(array)
        for record in records_of(message.content, ArrayRecord).values()
        for array in record.values()
    )


def bytes_to_accuracy(rounds: Iterable[Mapping[str, Any]], target: float) -> dict[str, int] | None:
    """The bytes each way a run had sent when its accuracy first reached ``target``.

    ``rounds`` are per-round records in ``metrics.jsonl``'s form (``round``, ``accuracy``,
    ``uplink_bytes``, ``downlink_bytes``, and ``evaluated``, False where a round was not
    evaluated). None when the run never reached ``target``.

    Examples:
        >>> rounds = [{"round": 1, "accuracy": 0.5, "uplink_bytes": 10, "downlink_bytes": 40},
        ...           {"round": 2, "accuracy": 0.9, "uplink_bytes": 10, "downlink_bytes": 30}]
        >>> bytes_to_accuracy(rounds, 0.8)
        {'round': 2, 'uplink_bytes': 20, 'downlink_bytes': 70}
        >>> bytes_to_accuracy(rounds, 0.95) is None
        True
    """
    uplink = downlink = 0
    for record in rounds:
        uplink += int(record["uplink_bytes"])
        downlink += int(record["downlink_bytes"])
        if record.get("evaluated", True) and record["accuracy"] >= target:
            return {
                "round": int(record["round"]),
                "uplink_bytes": uplink,
                "downlink_bytes": downlink,
            }
    return None
