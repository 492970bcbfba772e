"""The round loop, owned once: every strategy, synchronous or asynchronous, runs through it.

Examples:
    >>> from flwr.app import ArrayRecord
    >>> class Counter:
    ...     def summary(self): pass
    ...     def begin(self, grid, arrays, first_round): self.rounds = []
    ...     def run_round(self, server_round, arrays, grid, timeout):
    ...         self.rounds.append(server_round)
    ...         return RoundOutcome(None)
    ...     def end(self): pass
    >>> counter = Counter()
    >>> result = RoundEngine(counter).run(None, ArrayRecord(), num_rounds=5, first_round=4)
    >>> counter.rounds, result.last_round, result.stopped
    ([4, 5], 5, None)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from stamen.core.rounds import RoundOutcome, RoundStrategy
from stamen.engine.hooks import RoundHooks
from stamen.engine.model_guard import refusal
from stamen.engine.rounds import rounds_of

LOG = logging.getLogger("stamen.engine")


@dataclass
class EngineResult:
    """How a run ended.

    Attributes:
        arrays: The last global model.
        last_round: The last round that finished (the round it resumed after, if none did).
        stopped: Why the run stopped early (``None``: it ran every round).
        train_metrics: Each round's aggregated training metrics.
        evaluate_metrics: Each round's central evaluation.
        refused: The rounds whose aggregated model was refused (``model_guard``), and why.
    """

    arrays: ArrayRecord
    last_round: int
    stopped: str | None = None
    train_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)


class RoundEngine:
    """Run rounds of ``strategy`` with ``hooks`` around each.

    Args:
        strategy: A :class:`RoundStrategy`, or any Flower ``Strategy`` (run synchronously).
        hooks: Central evaluation, reporting, checkpointing and control.
    """

    def __init__(self, strategy: Strategy | RoundStrategy, hooks: RoundHooks | None = None) -> None:
        self.rounds = rounds_of(strategy)
        self.hooks = hooks or RoundHooks()

    def run(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        *,
        num_rounds: int,
        first_round: int = 1,
        timeout: float = 3600.0,
    ) -> EngineResult:
        """Run rounds ``first_round..num_rounds`` from ``arrays``.

        A resumed run passes the restored model and ``first_round = k + 1``.
        """
        hooks, rounds = self.hooks, self.rounds
        rounds.summary()
        result = EngineResult(arrays=arrays, last_round=first_round - 1)
        hooks.start(first_round - 1, arrays)
        rounds.begin(grid, arrays, first_round)
        try:
            for server_round in range(first_round, num_rounds + 1):
                outcome = rounds.run_round(server_round, result.arrays, grid, timeout)
                if outcome is None:
                    LOG.error(
                        "round %d: no reply within %.0f s; stopping early", server_round, timeout
                    )
                    break
                self._finish_round(server_round, outcome, result)
                if server_round < num_rounds and (reason := hooks.control(server_round)):
                    result.stopped = reason
                    break
        finally:
            rounds.end()
        return result

    def _finish_round(self, server_round: int, outcome: RoundOutcome, result: EngineResult) -> None:
        hooks = self.hooks
        if outcome.arrays is not None and (reason := refusal(result.arrays, outcome.arrays)):
            LOG.error(
                "round %d: refused the aggregated model (%s); keeping the round's model",
                server_round,
                reason,
            )
            result.refused[server_round] = reason
            outcome = dataclasses.replace(outcome, arrays=None)
        if outcome.arrays is not None:
            result.arrays = outcome.arrays
        if outcome.train_metrics is not None:
            result.train_metrics[server_round] = outcome.train_metrics
        evaluation = hooks.evaluate(server_round, result.arrays)
        if evaluation is not None:
            result.evaluate_metrics[server_round] = evaluation
        result.last_round = server_round
        hooks.checkpoint(server_round, result.arrays)
        hooks.report(server_round, result.arrays, outcome, evaluation)
