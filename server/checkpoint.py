"""Round checkpoints: the global model, the strategy's state and the finished rounds.

:class:`CheckpointStore` writes one file after every round, atomically (a temp
file, fsync, then ``os.replace``), so a server killed at any moment leaves the
previous round's checkpoint or the new one, never a torn file. A restarted
server loads it and resumes with the next round (:class:`ResumedStrategy`).

Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> store = CheckpointStore(Path(tempfile.mkdtemp()))
    >>> store.save(Checkpoint(round=2, arrays={"w": np.ones(3, np.float32)}))
    >>> store.load().round
    2
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from stamen.core import write_atomic
from stamen.core.errors import ConfigError

LOG = logging.getLogger("stamen.server")

CHECKPOINT_FILE = "checkpoint.npz"
_META = "__meta__"
_MODEL = "model/"
_MASK = "mask/"


@dataclass
class Checkpoint:
    """Everything needed to go on after round ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    """The global model after the round."""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    """JSON-ready strategy state (sampling RNG, known Stamen nodes)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """The finished rounds' records, so the summary covers the whole run."""
    config: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """A directory holding the latest checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CHECKPOINT_FILE

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the stored checkpoint with ``checkpoint``, atomically."""
        meta = {
            "round": checkpoint.round,
            "strategy": checkpoint.strategy,
            "records": checkpoint.records,
            "config": checkpoint.config,
            "model_order": list(checkpoint.arrays),
        }
        arrays = {_MODEL + k: v for k, v in checkpoint.arrays.items()}
        arrays.update({_MASK + k: v for k, v in checkpoint.masks.items()})
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
                masks = {
                    k[len(_MASK) :]: data[k].astype(bool) for k in data.files if k.startswith(_MASK)
                }
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"checkpoint {self.path} cannot be read: {error}") from None
        return Checkpoint(
            round=int(meta["round"]),
            arrays=arrays,
            masks=masks,
            strategy=meta.get("strategy", {}),
            records=meta.get("records", []),
            config=meta.get("config", {}),
        )


def strategy_state(strategy: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The parts of a Stamen strategy that carry over between rounds."""
    state: dict[str, Any] = {}
    rng = getattr(strategy, "rng", None)
    if isinstance(rng, np.random.Generator):
        state["rng"] = rng.bit_generator.state
    nodes = getattr(strategy, "stamen_nodes", None)
    if isinstance(nodes, set):
        state["stamen_nodes"] = sorted(nodes)
    if getattr(strategy, "_waited_for_devices", False):
        state["waited_for_devices"] = True
    masks = getattr(strategy, "masks", None)
    return state, dict(masks) if isinstance(masks, dict) else {}


def restore_strategy(strategy: Strategy, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's strategy state back into ``strategy``."""
    state = checkpoint.strategy
    rng = getattr(strategy, "rng", None)
    if "rng" in state and isinstance(rng, np.random.Generator):
        rng.bit_generator.state = state["rng"]
    if "stamen_nodes" in state and isinstance(getattr(strategy, "stamen_nodes", None), set):
        strategy.stamen_nodes = set(state["stamen_nodes"])  # type: ignore[attr-defined]
    if checkpoint.masks and isinstance(getattr(strategy, "masks", None), dict):
        strategy.masks = dict(checkpoint.masks)  # type: ignore[attr-defined]


class ResumedStrategy(Strategy):
    """Runs ``inner`` as if rounds ``1..offset`` had already happened.

    Flower's ``Strategy.start`` always counts from round 1; this wrapper adds
    ``offset`` to every round number it passes on, so pruning schedules, seeds
    and round checks see the true round.
    """

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def summary(self) -> None:
        """The inner strategy's summary."""
        LOG.info("resuming after round %d", self.offset)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate with the true round number."""
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate with the true round number."""
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate with the true round number."""
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate with the true round number."""
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
