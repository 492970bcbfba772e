"""Synchronous rounds for the engine: any Flower ``Strategy`` as a :class:`RoundStrategy`.

A synchronous strategy (``configure_train``, ``aggregate_train``,
``configure_evaluate``, ``aggregate_evaluate``) runs one round through
:class:`SynchronousRounds`, which sends the round's messages and waits for the
replies. An asynchronous strategy such as :class:`~stamen.strategies.FedBuff`
implements :class:`~stamen.core.rounds.RoundStrategy` itself: ``run_round``
keeps devices busy until its buffer holds enough updates, then aggregates them.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from stamen.core.rounds import RoundOutcome, RoundStrategy


class SynchronousRounds:
    """Drive a Flower ``Strategy`` round by round, as ``Strategy.start`` does.

    Each round: ``configure_train``, send and wait, ``aggregate_train``; then
    ``configure_evaluate``, send and wait, ``aggregate_evaluate`` on the new model.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        """The strategy's summary."""
        self.strategy.summary()

    def begin(self, grid: Grid, arrays: ArrayRecord, first_round: int) -> None:
        """Nothing to prepare: a synchronous round starts from scratch."""

    def run_round(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, timeout: float
    ) -> RoundOutcome:
        """One synchronous round of training, then federated evaluation."""
        strategy = self.strategy
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        current = arrays if new_arrays is None else new_arrays
        messages = strategy.configure_evaluate(server_round, current, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        return RoundOutcome(new_arrays, train_metrics, evaluate_metrics)

    def end(self) -> None:
        """Nothing to release."""


def rounds_of(strategy: Strategy | RoundStrategy) -> RoundStrategy:
    """The strategy itself where it runs its own rounds, else :class:`SynchronousRounds` of it."""
    if isinstance(strategy, RoundStrategy):
        return strategy
    return SynchronousRounds(strategy)
