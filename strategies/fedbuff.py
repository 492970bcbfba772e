"""FedBuff: asynchronous, buffered aggregation of compressed updates.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022, https://arxiv.org/abs/2106.06639.

There are no rounds for devices to wait on. The server keeps ``concurrency``
devices training at all times, each on whichever model version it was handed;
whenever a device replies, another idle device gets the current model. Once
``buffer_size`` valid updates are buffered, the server aggregates them, each
weighted by its staleness ``s`` (how many versions the model moved on while
the device trained) as ``1 / (1 + s) ** staleness_exponent``, and publishes a
new version. One aggregation plays the part of one round in the records.

The loop uses only the Grid's ``push_messages`` and ``pull_messages``, so it
runs on any grid that hands back replies as they complete: the in-process
grid (where every reply completes at once), a simulation grid with a
simulated clock (read as ``grid.now`` when present, and recorded per
aggregation), or the edge grid.

Examples:
    >>> from stamen.models import ModelSpec, build_model
    >>> from stamen.contract import TrainTask
    >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
    >>> strategy = FedBuff(buffer_size=3, devices_per_round=6,
    ...     model_factory=lambda: build_model(spec), task=TrainTask(model=spec.name))
    >>> strategy.concurrency, round(strategy.staleness_weight(3), 3)
    (6, 0.5)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from stamen.core.errors import ConfigError
from stamen.core.fleet import RoundTiming
from stamen.core.rounds import RoundOutcome
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport import AsyncDispatch, RoundStats
from stamen.transport.deltas import apply_masks_np, to_array_record, to_numpy
from stamen.transport.reply_validation import ValidUpdate

LOG = logging.getLogger("stamen.strategies")


class FedBuff(CompressedFedAvg):
    """Buffered asynchronous aggregation over compressed updates.

    Args:
        buffer_size: aggregate whenever this many valid updates are buffered (K).
        concurrency: devices training at once; ``None`` uses ``devices_per_round``.
        staleness_exponent: weight ``1 / (1 + staleness) ** exponent`` (0.5 as in the paper).
        server_lr: the server step applied to the aggregated delta.
        poll_interval: wall-clock seconds between polls when no reply is ready.
        **kwargs: as for :class:`CompressedFedAvg`.
    """

    def __init__(
        self,
        *,
        buffer_size: int = 5,
        concurrency: int | None = None,
        staleness_exponent: float = 0.5,
        server_lr: float = 1.0,
        poll_interval: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1; got {buffer_size!r}")
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1; got {concurrency!r}")
        if not (math.isfinite(staleness_exponent) and staleness_exponent >= 0):
            raise ConfigError(f"staleness_exponent must be >= 0; got {staleness_exponent!r}")
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ConfigError(f"server_lr must be > 0; got {server_lr!r}")
        self.buffer_size = buffer_size
        self.concurrency = concurrency or self.devices_per_round
        self.staleness_exponent = staleness_exponent
        self.server_lr = server_lr
        self.poll_interval = poll_interval
        self.staleness: dict[int, list[int]] = {}
        """The staleness of every update each aggregation used."""
        self.clock: dict[int, float] = {}
        """The grid's simulated time (``grid.now``) at each aggregation, where it has one."""
        self._run: AsyncDispatch | None = None
        self._first_round = 1
        self._restored_buffer: list[tuple[ValidUpdate, int]] = []

    def summary(self) -> None:
        """Log the strategy's settings."""
        super().summary()
        LOG.info(
            "FedBuff: buffer %d, %d devices training at once, staleness exponent %g",
            self.buffer_size,
            self.concurrency,
            self.staleness_exponent,
        )

    def staleness_weight(self, staleness: int) -> float:
        """How much an update ``staleness`` versions old counts."""
        return float((1.0 + staleness) ** -self.staleness_exponent)

    def staleness_histogram(self) -> dict[int, int]:
        """How many aggregated updates had each staleness, over the whole run."""
        counts = Counter(s for values in self.staleness.values() for s in values)
        return dict(sorted(counts.items()))

    def timing(self, aggregation: int) -> RoundTiming:
        """One aggregation as a round: its messages and, on a clocked grid, its duration."""
        stats = self.stats.get(aggregation) or RoundStats(aggregation)
        clock = self.clock.get(aggregation, 0.0)
        return RoundTiming(
            dispatched=stats.sampled,
            participants=stats.accepted + len(stats.rejections),
            seconds=clock - self.clock.get(aggregation - 1, 0.0),
            clock=clock,
        )

    # -- rounds, as the engine asks for them ----------------------------------------

    def begin(self, grid: Grid, arrays: ArrayRecord, first_round: int) -> None:
        """Start handing out models: version ``first_round`` is the first published."""
        if self.devices_per_evaluation:
            LOG.warning("FedBuff does not run federated evaluation; central evaluation only")
        self._run = AsyncDispatch(
            self,
            grid,
            to_numpy(arrays),
            self._restored_buffer,
            first_round,
            concurrency=self.concurrency,
            buffer_size=self.buffer_size,
            poll_interval=self.poll_interval,
        )
        self._restored_buffer = []
        self._first_round = first_round

    def run_round(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, timeout: float
    ) -> RoundOutcome | None:
        """Keep devices training until ``buffer_size`` updates wait, then aggregate them.

        ``timeout`` bounds the wall-clock wait for any reply; when it passes, ``None``.
        """
        run = self._run
        if run is None:
            raise RuntimeError("FedBuff.run_round before begin")
        if server_round != self._first_round:
            run.model = to_numpy(arrays)
            run.publish(server_round)
        buffer = run.fill_buffer(timeout)
        if buffer is None:
            return None
        new_arrays, metrics = self._aggregate_buffer(server_round, run, buffer)
        if (now := getattr(grid, "now", None)) is not None:
            self.clock[server_round] = float(now)
        return RoundOutcome(new_arrays, metrics)

    def end(self) -> None:
        """Drop what is still in flight: the run is over."""
        if self._run is not None and self._run.in_flight:
            LOG.info(
                "FedBuff: %d updates in flight at the end are dropped", len(self._run.in_flight)
            )
        self._run = None

    def start(self, *args: object, **kwargs: object) -> Result:
        """Not Flower's synchronous loop: FedBuff runs through ``stamen.engine.RoundEngine``."""
        raise TypeError("FedBuff is asynchronous: run it with stamen.engine.RoundEngine")

    # -- state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base state, the staleness and clock history, and the buffered updates.

        Messages in flight are not state: after a restart their replies cannot reach
        this server, and their devices are dispatched afresh.
        """
        run = self._run
        return {
            **super().state_dict(),
            "staleness": {str(k): list(v) for k, v in self.staleness.items()},
            "clock": {str(k): v for k, v in self.clock.items()},
            "buffer": [
                {
                    "version": version,
                    "delta": dict(update.delta),
                    "num_examples": update.num_examples,
                    "wire_bytes": update.wire_bytes,
                    "plain": update.plain,
                    "train_loss": update.train_loss,
                }
                for update, version in (run.buffer if run is not None else [])
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.staleness = {int(k): [int(s) for s in v] for k, v in state["staleness"].items()}
        self.clock = {int(k): float(v) for k, v in state["clock"].items()}
        self._restored_buffer = [
            (
                ValidUpdate(
                    delta={k: np.asarray(v) for k, v in item["delta"].items()},
                    num_examples=int(item["num_examples"]),
                    wire_bytes=int(item["wire_bytes"]),
                    plain=bool(item["plain"]),
                    train_loss=item["train_loss"],
                ),
                int(item["version"]),
            )
            for item in state["buffer"]
        ]

    def _aggregate_buffer(
        self, aggregation: int, run: AsyncDispatch, buffer: list[tuple[ValidUpdate, int]]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        stats = self.stats[aggregation]
        bounded = self.bound(aggregation, [update for update, _ in buffer], stats)
        buffer = [
            (update, buffer[position][1])
            for update, position in zip(bounded.kept, bounded.positions, strict=True)
        ]
        stats.accepted = len(buffer)
        self.staleness[aggregation] = [staleness for _, staleness in buffer]
        scaled = staleness_scaled(buffer, self.staleness_exponent, self.server_lr)
        model = self.step(run.model, self.aggregate_deltas(scaled))
        if self.masks:
            model = apply_masks_np(model, self.masks)
        metrics = MetricRecord({"accepted": len(buffer), "rejected": len(stats.rejections)})
        losses = [(u.train_loss, u.num_examples) for u, _ in buffer if u.train_loss is not None]
        if losses:
            stats.train_loss = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
            metrics["train-loss"] = stats.train_loss
        if not all(np.isfinite(value).all() for value in model.values()):
            LOG.error("aggregation %d gave non-finite weights; model unchanged", aggregation)
            return None, metrics
        return to_array_record(model), metrics


def staleness_scaled(
    buffer: list[tuple[ValidUpdate, int]], exponent: float, server_lr: float = 1.0
) -> list[ValidUpdate]:
    """Each delta times ``server_lr / (1 + staleness) ** exponent``.

    Their example-weighted mean is then ``server_lr * sum(n_i w_i d_i) / sum(n_i)``:
    the paper's staleness-scaled average, with devices weighted by their examples.

    Examples:
        >>> import numpy as np
        >>> fresh = ValidUpdate({"w": np.array([1.0])}, 1, 0, False, None)
        >>> [float(u.delta["w"][0]) for u in staleness_scaled([(fresh, 0), (fresh, 3)], 0.5)]
        [1.0, 0.5]
    """
    return [
        dataclasses.replace(
            update,
            delta={
                name: value * (server_lr * (1.0 + staleness) ** -exponent)
                for name, value in update.delta.items()
            },
        )
        for update, staleness in buffer
    ]
