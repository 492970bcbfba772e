"""The federation's engine hooks: central evaluation, records, checkpoints, operator control."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from torch import nn

from stamen.client.trainer import EvalResult, evaluate
from stamen.config import StamenConfig
from stamen.core.fleet import PolicyGrid
from stamen.engine import RoundHooks, RoundOutcome
from stamen.models import load_exchanged_state
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.control import RunControl, StopRequested, operator_settings
from stamen.server.reporting import RoundRecord, RoundReporter
from stamen.server.stats import round_record
from stamen.strategies import CompressedFedAvg
from stamen.transport import to_numpy


class FederationHooks(RoundHooks):
    """What ``run_federation`` does around each round.

    Args:
        config: The run's config (rounds, ``eval_every``).
        strategy: The strategy, for its per-round stats and its state.
        grid: The grid, for its round timing where it keeps one.
        model: The torch model central evaluation loads each global model into.
        test_set: Central evaluation's inputs and labels.
        reporter: Receives the start, each round's record, and (from the caller) the end.
        control: Pause, stop and settings changes between rounds.
        checkpoints: Where the state is saved after every round.
        resumed: The checkpoint this run goes on from.
    """

    def __init__(
        self,
        *,
        config: StamenConfig,
        strategy: CompressedFedAvg,
        grid: Grid,
        model: nn.Module,
        test_set: tuple[torch.Tensor, torch.Tensor],
        reporter: RoundReporter,
        control: RunControl | None = None,
        checkpoints: CheckpointStore | None = None,
        resumed: Checkpoint | None = None,
    ) -> None:
        self.config, self.strategy, self.grid, self.model = config, strategy, grid, model
        self.test_set, self.reporter = test_set, reporter
        self.control_of_run, self.checkpoints = control, checkpoints
        self.records: list[RoundRecord] = []
        self.restored = [RoundRecord.from_dict(r) for r in resumed.records] if resumed else []
        self.last = EvalResult(loss=float("nan"), accuracy=0.0, num_examples=0)
        self.last_restored = resumed is not None and "last_evaluation" in resumed.engine
        if resumed is not None and self.last_restored:
            self.last = EvalResult(**resumed.engine["last_evaluation"])
        self.evaluated = False
        self.round_started = time.perf_counter()

    def start(self, last_round: int, arrays: ArrayRecord) -> None:
        """Evaluate the starting model, announce the run, replay a resumed run's rounds.

        A resumed run starts from the checkpoint's last evaluation instead, so rounds
        that ``eval_every`` skips repeat what the uninterrupted run would have.
        """
        if not self.last_restored:
            self._evaluate(arrays)
        self.reporter.on_start(self.config.federation.rounds, self.last.accuracy)
        for record in self.restored:
            self.records.append(record)
            self.reporter.on_round(record)
        self.round_started = time.perf_counter()

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Every ``eval_every`` rounds and after the last; other rounds repeat the last result."""
        every = self.config.federation.eval_every
        self.evaluated = server_round % every == 0 or server_round == self.config.federation.rounds
        if self.evaluated:
            self._evaluate(arrays)
        return MetricRecord({"accuracy": self.last.accuracy, "loss": self.last.loss})

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Record the round, then save everything the run needs to go on after it."""
        timing = self.grid.last_timing() if isinstance(self.grid, PolicyGrid) else None
        record = round_record(
            self.strategy,
            server_round,
            self.last.accuracy,
            self.last.loss,
            time.perf_counter() - self.round_started,
            timing,
        )
        if not self.evaluated:
            record = dataclasses.replace(record, evaluated=False)
        self.records.append(record)
        if self.checkpoints is not None:
            self.checkpoints.save(self.state(server_round, arrays))

    def report(
        self,
        server_round: int,
        arrays: ArrayRecord,
        outcome: RoundOutcome,
        evaluation: MetricRecord | None,
    ) -> None:
        """Publish the round's record."""
        self.reporter.on_round(self.records[-1])
        self.round_started = time.perf_counter()

    def control(self, server_round: int) -> str | None:
        """The operator's between-rounds controls; a stop is the reason to end."""
        if self.control_of_run is None:
            return None
        try:
            self.control_of_run.between_rounds(server_round)
        except StopRequested as stop:
            return str(stop)
        finally:
            self.round_started = time.perf_counter()
        return None

    def state(self, server_round: int, arrays: ArrayRecord) -> Checkpoint:
        """The whole server state after ``server_round``."""
        engine: dict[str, Any] = {"last_evaluation": dataclasses.asdict(self.last)}
        federation = self.config.federation
        changed = operator_settings(
            self.strategy, federation.devices_per_round, federation.deadline or None
        )
        if changed:
            engine["operator_settings"] = changed
        return Checkpoint(
            round=server_round,
            arrays=to_numpy(arrays),
            strategy=self.strategy.state_dict(),
            records=[r.to_dict() for r in self.records],
            config=self.config.to_dict(),
            engine=engine,
        )

    def _evaluate(self, arrays: ArrayRecord) -> None:
        load_exchanged_state(self.model, to_numpy(arrays))
        self.last = evaluate(self.model, *self.test_set)
