"""Federated averaging over compressed updates, with server-side pruning.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.
Compressed updates with error feedback: Sattler et al., "Robust and
Communication-Efficient Federated Learning from Non-IID Data", IEEE TNNLS 2019,
https://arxiv.org/abs/1903.02891. Gradual magnitude pruning: Zhu and Gupta,
"To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878.

The algorithm: the example-weighted mean of the accepted, decoded deltas is
applied to the full-precision global model (``aggregate_deltas`` and
``apply_delta`` are what other strategies override). Everything on the wire
(sampling, pruning masks, downlink encoding, reply validation, traffic stats)
is :class:`~stamen.transport.CompressedTransport`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from stamen.transport import (
    CompressedTransport,
    ValidUpdate,
    apply_masks_np,
    next_model,
    to_array_record,
    weighted_mean_delta,
)

LOG = logging.getLogger("stamen.strategies")


class CompressedFedAvg(CompressedTransport, FedAvg):
    """FedAvg whose messages carry encoded models and updates.

    Its keyword arguments are the shared transport's (:class:`CompressedTransport`):

    Args:
        model_factory: builds the (plain, float) model architecture; used for
            pruning and shape checks.
        task: the training task template sent to devices; its round is set per round.
        downlink: codec for the global model.
        pruning: sparsity target and ramp, applied on the server.
        devices_per_round: how many devices to sample for training.
        seed: seeds device sampling, so runs are reproducible.
        plain_client_compat: also send the dense model to devices not yet known
            to speak Stamen, so plain Flower ClientApps can take part.
        max_update_bytes: larger updates are rejected unread.
        max_update_norm: optional L2 bound on a decoded delta.
        devices_per_evaluation: devices sampled for federated evaluation (0: none).
        min_available_wait: seconds to wait for enough devices to connect.
        over_selection: sample this fraction more devices; on grids that support a
            round policy, the first ``devices_per_round`` replies close the round.
        deadline: seconds a device has to answer, on grids that support a round
            policy (simulated seconds on the simulation grid).

    Examples:
        >>> from stamen.compression import DownlinkCodecConfig, UplinkCodecConfig
        >>> from stamen.models import ModelSpec, build_model
        >>> from stamen.contract import TrainTask
        >>> spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10)
        >>> strategy = CompressedFedAvg(
        ...     model_factory=lambda: build_model(spec),
        ...     task=TrainTask(model=spec.name, uplink=UplinkCodecConfig(topk_ratio=0.05)),
        ...     downlink=DownlinkCodecConfig(values="q8"),
        ...     devices_per_round=10,
        ... )
        >>> strategy.task.uplink.topk_ratio
        0.05
    """

    def __init__(self, **transport: Any) -> None:
        CompressedTransport.__init__(self, **transport)
        # Sampling is the transport's own (seeded, by count), so Flower's fractions stay at 1.
        FedAvg.__init__(
            self,
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=self.devices_per_round,
            min_evaluate_nodes=self.devices_per_evaluation,
            min_available_nodes=self.devices_per_round,
        )

    def summary(self) -> None:
        """Log the strategy's settings."""
        LOG.info(
            "CompressedFedAvg: %d devices/round, downlink %s, pruning to %.0f%% (%s)",
            self.devices_per_round,
            self.downlink.values.value,
            100 * self.pruning.target_sparsity,
            self.pruning.method.value,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Prune, encode the global model, and address a fresh record to each sampled device."""
        return self.send_train(server_round, arrays, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current model to devices for federated evaluation, if enabled."""
        return self.send_evaluate(server_round, arrays, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, then apply the weighted mean of the accepted deltas."""
        received = self.receive_train(server_round, replies)
        if received is None:
            return None, None
        sent, accepted = received
        stats = self.stats[server_round]
        if not accepted:
            LOG.warning("round %d: no valid updates; the global model is unchanged", server_round)
            return None, MetricRecord({"accepted": 0, "rejected": len(stats.rejections)})
        new_model = self.step(sent.dense, self.aggregate_deltas(accepted))
        if self.masks:
            new_model = apply_masks_np(new_model, self.masks)
        if not all(np.isfinite(value).all() for value in new_model.values()):
            LOG.error(
                "round %d: aggregation gave non-finite weights; model unchanged", server_round
            )
            return None, MetricRecord({"accepted": 0, "rejected": len(stats.rejections)})
        losses = [(u.train_loss, u.num_examples) for u in accepted if u.train_loss is not None]
        metrics = MetricRecord({"accepted": len(accepted), "rejected": len(stats.rejections)})
        if losses:
            stats.train_loss = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
            metrics["train-loss"] = stats.train_loss
        return to_array_record(new_model), metrics

    # -- hooks that other strategies override ------------------------------------

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """Combine the accepted, decoded deltas into one: here their example-weighted mean."""
        return weighted_mean_delta(updates)

    def apply_delta(
        self, base: dict[str, np.ndarray], delta: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The next global model from this round's model and the aggregated delta."""
        return {name: (value + delta[name]).astype(np.float32) for name, value in base.items()}

    def step(
        self, base: dict[str, np.ndarray], delta: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """:meth:`apply_delta`, with the running variances moved by their log-ratios
        (:func:`stamen.transport.next_model`), whatever the strategy's step."""
        return next_model(base, delta, self.apply_delta(base, delta))
