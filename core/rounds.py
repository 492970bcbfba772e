"""The round protocols the engine drives and strategies implement (``stamen.engine`` runs them).

A *round* is one aggregation. A synchronous Flower ``Strategy`` is driven
round by round by :class:`stamen.engine.SynchronousRounds`; an asynchronous
strategy (FedBuff) implements :class:`RoundStrategy` itself. Every Stamen
strategy is :class:`Stateful`, so a checkpoint holds all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, MetricRecord
    from flwr.serverapp import Grid


@dataclass(frozen=True)
class RoundOutcome:
    """What one round produced.

    Attributes:
        arrays: The new global model, or ``None`` when the round left it unchanged.
        train_metrics: The strategy's aggregated training metrics.
        evaluate_metrics: The aggregated federated-evaluation metrics, if any ran.
    """

    arrays: ArrayRecord | None
    train_metrics: MetricRecord | None = None
    evaluate_metrics: MetricRecord | None = None


@runtime_checkable
class Stateful(Protocol):
    """A strategy whose whole state can be saved and restored between rounds.

    ``state_dict`` returns nested dicts and lists whose leaves are JSON values or
    numpy arrays; ``load_state_dict`` takes what it returned (after a round trip
    through :class:`~stamen.server.checkpoint.CheckpointStore`) and puts it back.
    """

    def state_dict(self) -> dict[str, Any]:
        """The state that carries over from one round to the next."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class RoundStrategy(Protocol):
    """A strategy the engine asks for one round (aggregation) at a time."""

    def summary(self) -> None:
        """Log the strategy's settings."""
        ...

    def begin(self, grid: Grid, arrays: ArrayRecord, first_round: int) -> None:
        """Get ready to run rounds ``first_round``, ``first_round + 1``, ... from ``arrays``."""
        ...

    def run_round(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, timeout: float
    ) -> RoundOutcome | None:
        """Run round ``server_round`` from the global model ``arrays``.

        Returns ``None`` when no round could run within ``timeout`` (the run ends early).
        """
        ...

    def end(self) -> None:
        """The run is over (finished or stopped)."""
        ...
