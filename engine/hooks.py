"""The engine's hooks: what happens around each round, apart from the strategy's own work.

:class:`RoundHooks` does nothing by default; a federation subclasses it to
evaluate centrally, report, checkpoint and take operator control. After every
round the engine calls, in this order: :meth:`~RoundHooks.evaluate`,
:meth:`~RoundHooks.checkpoint` (first, so a reported round is always a saved
one), :meth:`~RoundHooks.report`, and, unless it was the last round,
:meth:`~RoundHooks.control`.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord

from stamen.core.rounds import RoundOutcome


class RoundHooks:
    """Callbacks around the rounds; override what a run needs."""

    def start(self, last_round: int, arrays: ArrayRecord) -> None:
        """Before the first round (evaluate the starting model, announce the run).

        ``last_round`` is the round a resumed run goes on after, 0 for a fresh run.
        """

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Central evaluation of the global model after ``server_round``."""
        return None

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Save the state after ``server_round``."""

    def report(
        self,
        server_round: int,
        arrays: ArrayRecord,
        outcome: RoundOutcome,
        evaluation: MetricRecord | None,
    ) -> None:
        """Publish the finished round."""

    def control(self, server_round: int) -> str | None:
        """Between rounds: apply new settings, wait while paused; a reason to stop ends the run."""
        return None
