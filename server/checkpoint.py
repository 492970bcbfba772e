"""Round checkpoints: the whole server state after a round.

A :class:`Checkpoint` holds the global model, the strategy's ``state_dict()``
(sampling RNG, known nodes, masks, optimizer moments, students, FedBuff's
buffer ...), the finished rounds' records, the config, and what the engine's
hooks need to go on (the last central evaluation). :class:`CheckpointStore`
writes one file after every round, atomically (a temp file, fsync, then
``os.replace``), so a server killed at any moment leaves the previous round's
checkpoint or the new one, never a torn file. A restarted server loads it and
the engine goes on with the next round.

The file is an ``.npz`` without pickles: every numpy array in the state is
stored as its own entry, and the rest as one JSON document that names them.

Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> store = CheckpointStore(Path(tempfile.mkdtemp()))
    >>> store.save(Checkpoint(round=2, arrays={"w": np.ones(3, np.float32)},
    ...     strategy={"m": {"w": np.zeros(3)}, "rng": {"state": 2**100}}))
    >>> loaded = store.load()
    >>> loaded.round, loaded.strategy["m"]["w"].shape, loaded.strategy["rng"]["state"] == 2**100
    (2, (3,), True)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stamen.core import write_atomic
from stamen.core.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.npz"
_META = "__meta__"
_MODEL = "model/"
_STATE = "state/"
_ARRAY_REF = "__array__"


@dataclass
class Checkpoint:
    """Everything needed to go on after round ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    """The global model after the round."""
    strategy: dict[str, Any] = field(default_factory=dict)
    """The strategy's ``state_dict()``: JSON values and numpy arrays."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """The finished rounds' records, so the summary covers the whole run."""
    config: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    """What the engine's hooks carry over (the last central evaluation)."""


class CheckpointStore:
    """A directory holding the latest checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CHECKPOINT_FILE

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the stored checkpoint with ``checkpoint``, atomically."""
        arrays = {_MODEL + k: v for k, v in checkpoint.arrays.items()}
        meta = {
            "round": checkpoint.round,
            "strategy": _split_arrays(checkpoint.strategy, arrays),
            "records": checkpoint.records,
            "config": checkpoint.config,
            "engine": _split_arrays(checkpoint.engine, arrays),
            "model_order": list(checkpoint.arrays),
        }
        arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        write_atomic(self.path, buffer.getvalue())

    def load(self) -> Checkpoint | None:
        """The stored checkpoint, or None when there is none."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(bytes(data[_META]).decode())
                arrays = {k: data[_MODEL + k] for k in meta["model_order"]}
                strategy = _join_arrays(meta.get("strategy", {}), data)
                engine = _join_arrays(meta.get("engine", {}), data)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"checkpoint {self.path} cannot be read: {error}") from None
        return Checkpoint(
            round=int(meta["round"]),
            arrays=arrays,
            strategy=strategy,
            records=meta.get("records", []),
            config=meta.get("config", {}),
            engine=engine,
        )


def _split_arrays(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` with each numpy array moved into ``arrays`` and replaced by a reference."""
    if isinstance(value, np.ndarray):
        key = f"{_STATE}{len(arrays)}"
        arrays[key] = value
        return {_ARRAY_REF: key}
    if isinstance(value, dict):
        return {str(k): _split_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_split_arrays(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join_arrays(value: Any, data: Any) -> Any:
    """Undo :func:`_split_arrays`, reading the referenced arrays from ``data``."""
    if isinstance(value, dict):
        if set(value) == {_ARRAY_REF}:
            return np.array(data[value[_ARRAY_REF]])
        return {k: _join_arrays(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, data) for v in value]
    return value
