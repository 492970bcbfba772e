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

Before a server serves anyone it asks :meth:`CheckpointStore.inspect` what the
directory holds (:class:`StoredRun`: how far the run got, whether it ended),
reading only that JSON document. A run that ends leaves a ``run-ended.json``
beside its checkpoint (:meth:`CheckpointStore.mark_ended`); the next saved round
removes it, and :meth:`CheckpointStore.archive` moves both aside for a fresh run.

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
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stamen.core import write_atomic
from stamen.core.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.npz"
ENDED_FILE = "run-ended.json"
"""Written when a run ends (finished or stopped by the operator), removed by the next round."""
PREVIOUS_DIR = "previous"
"""Where :meth:`CheckpointStore.archive` moves an old run, one folder per move."""
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


@dataclass(frozen=True)
class StoredRun:
    """What a state directory holds, read before the server serves anyone."""

    round: int
    """The last round checkpointed."""
    rounds: int
    """The rounds the run was started (or last resumed) for; 0 when the config does not say."""
    ended: str | None
    """``finished`` or ``stopped`` once the run ended; ``None`` while it is unfinished."""
    saved_unix: float
    results: str | None = None
    """The results folder of the run that ended there."""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the run ended (or ran all its rounds), as opposed to being cut short."""
        return self.ended is not None or (self.rounds > 0 and self.round >= self.rounds)

    def describe(self) -> str:
        """``a finished run (5 of 5 rounds, saved 2026-01-02 10:00 UTC, results in runs/x)``."""
        state = self.ended or ("finished" if self.finished else "unfinished")
        of = f" of {self.rounds}" if self.rounds else ""
        saved = datetime.fromtimestamp(self.saved_unix, UTC)
        where = f", results in {self.results}" if self.results else ""
        article = "an" if state == "unfinished" else "a"
        return (
            f"{article} {state} run ({self.round}{of} rounds, "
            f"saved {saved:%Y-%m-%d %H:%M} UTC{where})"
        )


def setup_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Where a checkpoint's config and ``current`` differ outside ``federation`` (data, model,
    compression), as ``section.key: saved -> current``; a run goes on only when none do."""
    differences = []
    for section in sorted(set(saved) - {"federation"}):
        was, now = saved[section], current.get(section)
        if isinstance(was, dict) and isinstance(now, dict):
            differences += [
                f"{section}.{key}: {was.get(key)!r} -> {now.get(key)!r}"
                for key in sorted(set(was) | set(now))
                if was.get(key) != now.get(key)
            ]
        elif was != now:
            differences.append(f"{section}: {was!r} -> {now!r}")
    return differences


class CheckpointStore:
    """A directory holding the latest checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CHECKPOINT_FILE
        self.ended_path = directory / ENDED_FILE

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
        self.ended_path.unlink(missing_ok=True)  # a new round: the run is live again

    def inspect(self) -> StoredRun | None:
        """What the directory holds (None: no checkpoint), from the checkpoint's JSON alone."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(bytes(data[_META]).decode())
            ended = json.loads(self.ended_path.read_text()) if self.ended_path.exists() else {}
            config = meta.get("config", {})
            return StoredRun(
                round=int(meta["round"]),
                rounds=int(config.get("federation", {}).get("rounds", 0)),
                ended=ended.get("ended"),
                saved_unix=self.path.stat().st_mtime,
                results=ended.get("results"),
                config=config,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"checkpoint {self.path} cannot be read: {error}") from None

    def mark_ended(self, how: str, results: Path | None = None) -> None:
        """Note that the run ended (``finished`` or ``stopped``), and where its results are."""
        record = {"ended": how, "unix": time.time(), "results": str(results) if results else None}
        write_atomic(self.ended_path, (json.dumps(record) + "\n").encode())

    def archive(self) -> Path:
        """Move the checkpoint (and its end note) to ``previous/<UTC time>/``; returns it."""
        target = self.directory / PREVIOUS_DIR / f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
        target.mkdir(parents=True)
        for path in (self.path, self.ended_path):
            if path.exists():
                path.replace(target / path.name)
        return target

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
