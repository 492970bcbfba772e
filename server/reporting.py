"""Per-round records and the reporters that receive them.

The server produces one :class:`RoundRecord` per round and hands it to a
:class:`RoundReporter`: a progress bar, a results directory, or both.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RoundRecord:
    """Everything a user wants to know about one finished round."""

    round: int
    accuracy: float
    """Central test-set accuracy of the global model after this round (0-1)."""
    loss: float
    sampled: int
    accepted: int
    rejected: int
    uplink_bytes: int
    downlink_bytes: int
    uplink_bytes_fp32: int
    downlink_bytes_fp32: int
    sparsity: float
    train_loss: float | None
    seconds: float
    plain_clients: int = 0
    """Accepted updates that came from plain Flower ClientApps (dense weights)."""
    rejections: list[dict[str, Any]] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    """Asynchronous strategies (FedBuff): each aggregated update's staleness in versions."""
    participants: int = 0
    """Replies the grid handed to the strategy (accepted or rejected)."""
    stragglers: int = 0
    """Devices that answered after the deadline; their replies were dropped."""
    dropouts: int = 0
    """Devices that went away mid-round."""
    surplus: int = 0
    """Over-selected devices that answered after the round had enough replies."""
    simulated_seconds: float = 0.0
    """The round's duration on the grid's clock (simulated seconds on a simulation)."""
    clock: float = 0.0
    """The grid's clock at the end of the round."""
    evaluated: bool = True
    """False when ``federation.eval_every`` skipped this round: accuracy is the last measured."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Metrics a strategy adds (e.g. ``accuracy_before_distill``); flattened by ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; ``extra`` metrics appear as top-level keys."""
        values = dataclasses.asdict(self)
        values.update(values.pop("extra"))
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RoundRecord:
        """The record :meth:`to_dict` gave ``values``: unknown keys go back into ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        return cls(**known, extra={k: v for k, v in values.items() if k not in names})


class RoundReporter(Protocol):
    """Receives a federation's progress."""

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """The federation is about to run its first round."""

    def on_round(self, record: RoundRecord) -> None:
        """A round finished and was evaluated."""

    def on_finish(self, summary: dict[str, Any]) -> None:
        """The federation finished; ``summary`` is what ``summary.json`` holds."""


class Reporters:
    """Fans progress out to several reporters."""

    def __init__(self, *reporters: RoundReporter | None) -> None:
        self.reporters = [r for r in reporters if r is not None]

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Forward to each reporter."""
        for reporter in self.reporters:
            reporter.on_start(total_rounds, initial_accuracy)

    def on_round(self, record: RoundRecord) -> None:
        """Forward to each reporter."""
        for reporter in self.reporters:
            reporter.on_round(record)

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Forward to each reporter."""
        for reporter in self.reporters:
            reporter.on_finish(summary)

    def on_models(self, models: list[Any]) -> None:
        """Forward the run's final models to each reporter that keeps them."""
        for reporter in self.reporters:
            on_models = getattr(reporter, "on_models", None)
            if on_models is not None:
                on_models(models)


class CollectingReporter:
    """Keeps every record and the summary in memory (tests, notebooks, runners)."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []
        self.summary: dict[str, Any] | None = None
        self.initial_accuracy: float | None = None

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Remember the starting accuracy."""
        self.initial_accuracy = initial_accuracy

    def on_round(self, record: RoundRecord) -> None:
        """Keep the record."""
        self.records.append(record)

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Keep the summary."""
        self.summary = summary


class HeapFreezer:
    """Moves everything alive when the first round starts out of the garbage collector's
    reach (``gc.freeze``).

    A server holding thousands of device sessions, their streams and the loaded dataset
    has millions of long-lived objects; each full collection walks them all, a pause of
    0.7 s at 10,000 devices that stops every thread, the gRPC loop included, and fell
    inside rounds. They live for the run anyway. A full collection first, so that no
    garbage is frozen with them; what the run allocates later is collected as usual.
    """

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Collect once, then freeze what survives."""
        gc.collect()
        gc.freeze()

    def on_round(self, record: RoundRecord) -> None:
        """Nothing to do per round."""

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Give the frozen objects back to the collector."""
        gc.unfreeze()
