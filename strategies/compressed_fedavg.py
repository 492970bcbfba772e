"""Federated averaging over compressed updates, with server-side pruning.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.
Compressed updates with error feedback: Sattler et al., "Robust and
Communication-Efficient Federated Learning from Non-IID Data", IEEE TNNLS 2019,
https://arxiv.org/abs/1903.02891. Gradual magnitude pruning: Zhu and Gupta,
"To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878.

Each round the server encodes the global model with the downlink codec (a
packed sparsity mask travels with it), sends every sampled device a fresh
record with its task, then decodes and validates each reply. A bad reply is
rejected with a logged reason and the round goes on with the rest. The
weighted mean delta is applied to the full-precision global model, and the
pruning schedule sets the next round's mask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from stamen.compression import (
    DownlinkCodec,
    DownlinkCodecConfig,
    PruningConfig,
    SparsitySchedule,
    compute_masks,
    dense_nbytes,
)
from stamen.contract import CONFIG_KEY, DENSE_KEY, MODEL_KEY, TrainTask
from stamen.core.errors import InvalidUpdate
from stamen.core.fleet import PolicyGrid, RoundPolicy, StreamingGrid
from stamen.models import load_exchanged_state
from stamen.strategies.deltas import apply_masks_np, to_array_record, to_numpy, weighted_mean_delta
from stamen.strategies.outgoing import CheckedReply, OutgoingRecords
from stamen.strategies.reply_validation import (
    SentModel,
    ValidUpdate,
    reply_wire_bytes,
    validate_reply,
)

LOG = logging.getLogger("stamen.strategies")


@dataclass(frozen=True)
class Rejection:
    """An update the server refused, and why."""

    node_id: int
    reason: str


@dataclass
class RoundStats:
    """Traffic and outcome of one training round, as the server saw it."""

    round_num: int
    sampled: int = 0
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    uplink_bytes_fp32: int = 0
    downlink_bytes_fp32: int = 0
    sparsity: float = 0.0
    train_loss: float | None = None
    plain_clients: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    """Further per-round metrics a subclass reports (e.g. distillation), flat and JSON-ready."""


class CompressedFedAvg(FedAvg):
    """FedAvg whose messages carry encoded models and updates.

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

    def __init__(
        self,
        *,
        model_factory: Callable[[], nn.Module],
        task: TrainTask,
        downlink: DownlinkCodecConfig | None = None,
        pruning: PruningConfig | None = None,
        devices_per_round: int = 10,
        seed: int = 0,
        plain_client_compat: bool = False,
        max_update_bytes: int = 64 * 2**20,
        max_update_norm: float | None = None,
        devices_per_evaluation: int = 0,
        min_available_wait: float = 60.0,
        over_selection: float = 0.0,
        deadline: float | None = None,
    ) -> None:
        # Sampling is this class's own (seeded, by count), so Flower's fractions stay at 1.
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=devices_per_round,
            min_evaluate_nodes=devices_per_evaluation,
            min_available_nodes=devices_per_round,
        )
        self.model_factory = model_factory
        self.task = task
        self.downlink = downlink or DownlinkCodecConfig()
        self.pruning = pruning or PruningConfig()
        self.schedule = SparsitySchedule(self.pruning)
        self.devices_per_round = devices_per_round
        self.devices_per_evaluation = devices_per_evaluation
        self.plain_client_compat = plain_client_compat
        self.max_update_bytes = max_update_bytes
        self.max_update_norm = max_update_norm
        self.min_available_wait = min_available_wait
        self.over_selection = over_selection
        self.deadline = deadline
        self.rng = np.random.default_rng(seed)
        self.masks: dict[str, np.ndarray] = {}
        self.stats: dict[int, RoundStats] = {}
        self.last_accepted: list[ValidUpdate] = []
        """The updates the last ``aggregate_train`` accepted (for subclasses that reuse them)."""
        self.stamen_nodes: set[int] = set()
        self._sent: SentModel | None = None
        self._outgoing: dict[tuple[str, TrainTask], OutgoingRecords] = {}
        self._checked: dict[str, CheckedReply] = {}
        self._waited_for_devices = False

    def summary(self) -> None:
        """Log the strategy's settings."""
        LOG.info(
            "CompressedFedAvg: %d devices/round, downlink %s, pruning to %.0f%% (%s)",
            self.devices_per_round,
            self.downlink.values.value,
            100 * self.pruning.target_sparsity,
            self.pruning.method.value,
        )

    # -- configure ---------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Prune, encode the global model, and address a fresh record to each sampled device."""
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        dense = self._prune(server_round, to_numpy(arrays))
        sent = self._encode(server_round, dense)
        extra = round(self.devices_per_round * self.over_selection)
        node_ids = self.sample(grid, self.devices_per_round + extra)
        if isinstance(grid, PolicyGrid):
            grid.set_round_policy(self.round_policy())
        self._checked.clear()
        if isinstance(grid, StreamingGrid):
            grid.on_each_reply(self._check_early)
        stats.sampled = len(node_ids)
        stats.sparsity = self.schedule.sparsity_at(server_round) if self.masks else 0.0
        task = self.task.replace(round_num=server_round)
        messages = [self._message(node, sent, task, MessageType.TRAIN, stats) for node in node_ids]
        LOG.info("round %d: sent the model to %d devices", server_round, len(messages))
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current model to devices for federated evaluation, if enabled."""
        if self.devices_per_evaluation == 0:
            return []
        sent = self._encode(server_round, to_numpy(arrays))
        task = self.task.replace(round_num=server_round)
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        return [
            self._message(node, sent, task, MessageType.EVALUATE, stats)
            for node in self.sample(grid, self.devices_per_evaluation)
        ]

    def round_policy(self) -> RoundPolicy:
        """When a round closes: the quorum over-selection implies, and the deadline."""
        quorum = self.devices_per_round if self.over_selection > 0 else None
        return RoundPolicy(quorum=quorum, deadline=self.deadline)

    def sample(self, grid: Grid, count: int) -> list[int]:
        """Sample ``count`` connected devices with this strategy's seeded generator."""
        # Wait for devices to connect once per run; a fleet smaller than asked for
        # should cost one warning, not a wait in every round.
        # A simulated fleet is all there: its offline devices will not connect meanwhile.
        wait = self._waited_for_devices or getattr(grid, "simulated_clock", False)
        deadline = time.monotonic() + (0.0 if wait else self.min_available_wait)
        node_ids = sorted(grid.get_node_ids())
        while len(node_ids) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            node_ids = sorted(grid.get_node_ids())
        if len(node_ids) < count and not self._waited_for_devices:
            LOG.warning(
                "only %d of the %d requested devices are connected; sampling all of them",
                len(node_ids),
                count,
            )
        self._waited_for_devices = True
        if not node_ids:
            return []
        chosen = self.rng.choice(len(node_ids), size=min(count, len(node_ids)), replace=False)
        return [node_ids[int(i)] for i in sorted(chosen)]

    def _prune(self, server_round: int, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sparsity = self.schedule.sparsity_at(server_round)
        if sparsity <= 0.0:
            return dense
        model = self.model_factory()
        load_exchanged_state(model, dense)
        self.masks = compute_masks(model, sparsity, self.pruning.method)
        return apply_masks_np(dense, self.masks)

    def _encode(self, server_round: int, dense: dict[str, np.ndarray]) -> SentModel:
        encoded = DownlinkCodec(self.downlink).encode(
            dense, round_num=server_round, masks=self.masks or None
        )
        self._sent = SentModel(
            model_hash=encoded.model_hash,
            decoded=encoded.decoded,
            dense=dense,
            round_num=server_round,
            payload=encoded.payload,
        )
        return self._sent

    def _message(
        self, node_id: int, sent: SentModel, task: TrainTask, message_type: str, stats: RoundStats
    ) -> Message:
        outgoing = self._outgoing_records(sent, task)
        records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            MODEL_KEY: outgoing.model,
            CONFIG_KEY: outgoing.config,
        }
        if self.plain_client_compat and node_id not in self.stamen_nodes:
            records[DENSE_KEY] = outgoing.dense()
        message = Message(
            content=RecordDict(records),
            dst_node_id=node_id,
            message_type=message_type,
            group_id=str(task.round_num),
        )
        if message_type == MessageType.TRAIN:
            stats.downlink_bytes += reply_wire_bytes(message)
            stats.downlink_bytes_fp32 += outgoing.dense_bytes
        return message

    def _outgoing_records(self, sent: SentModel, task: TrainTask) -> OutgoingRecords:
        """The records every device of a round receives, built once and shared by its messages
        (nothing downstream mutates them); a worker pool then also pickles them once."""
        key = (sent.model_hash, task)
        outgoing = self._outgoing.get(key)
        if outgoing is None:
            if any(o.sent.round_num != sent.round_num for o in self._outgoing.values()):
                self._outgoing.clear()  # keep only this round's
            outgoing = self._outgoing[key] = OutgoingRecords(sent, task.to_config_record())
        return outgoing

    # -- aggregate ---------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, then apply the weighted mean of the accepted deltas."""
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        sent = self._sent
        if sent is None or sent.round_num != server_round:
            LOG.error("round %d: replies arrived for a round that was never sent", server_round)
            return None, None
        # Sender order, not arrival order: float sums then do not depend on timing.
        in_order = sorted(replies, key=lambda reply: reply.metadata.src_node_id)
        accepted = [
            update
            for reply in in_order
            if (update := self.accept_reply(reply, server_round, sent, stats)) is not None
        ]
        stats.accepted = len(accepted)
        self.last_accepted = accepted
        if not accepted:
            LOG.warning("round %d: no valid updates; the global model is unchanged", server_round)
            return None, MetricRecord({"accepted": 0, "rejected": len(stats.rejections)})
        new_model = self.apply_delta(sent.dense, self.aggregate_deltas(accepted))
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

    def accept_reply(
        self, reply: Message, server_round: int, sent: SentModel, stats: RoundStats
    ) -> ValidUpdate | None:
        """Count a reply's traffic and validate it; a refused one is logged and recorded."""
        node_id = reply.metadata.src_node_id
        stats.uplink_bytes += reply_wire_bytes(reply)
        stats.uplink_bytes_fp32 += dense_nbytes(sent.dense) if not reply.has_error() else 0
        checked = self._checked.pop(reply.metadata.reply_to_message_id, None)
        try:
            if checked is not None and checked.sent is sent and sent.round_num == server_round:
                update = checked.outcome()
            else:
                update = self._validate_reply(reply, server_round, sent)
        except InvalidUpdate as error:
            stats.rejections.append(Rejection(node_id, str(error)))
            LOG.warning("round %d: rejected update from node %d: %s", server_round, node_id, error)
            return None
        if not update.plain:
            self.stamen_nodes.add(node_id)
        stats.plain_clients += int(update.plain)
        return update

    def _validate_reply(self, reply: Message, server_round: int, sent: SentModel) -> ValidUpdate:
        return validate_reply(
            reply,
            server_round=server_round,
            sent=sent,
            max_update_bytes=self.max_update_bytes,
            max_update_norm=self.max_update_norm,
        )

    def _check_early(self, reply: Message) -> None:
        """Validate a training reply as it arrives; ``accept_reply`` then reuses the result."""
        sent = self._sent
        if sent is None or reply.metadata.message_type != MessageType.TRAIN:
            return
        try:
            outcome: ValidUpdate | InvalidUpdate = self._validate_reply(reply, sent.round_num, sent)
        except InvalidUpdate as error:
            outcome = error
        self._checked[reply.metadata.reply_to_message_id] = CheckedReply(sent, outcome)

    # -- hooks that other strategies override ------------------------------------

    def aggregate_deltas(self, updates: list[ValidUpdate]) -> dict[str, np.ndarray]:
        """Combine the accepted, decoded deltas into one: here their example-weighted mean."""
        return weighted_mean_delta(updates)

    def apply_delta(
        self, base: dict[str, np.ndarray], delta: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The next global model from this round's model and the aggregated delta."""
        return {name: (value + delta[name]).astype(np.float32) for name, value in base.items()}
