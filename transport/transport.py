"""Stamen's transport of one round: what goes to devices, and what is let back in.

Everything here is the same whatever the aggregation algorithm: the seeded
sampling of devices, the round policy (over-selection quorum, deadline) on
grids that take one, the server-side pruning schedule and its masks, the
downlink encoding (one shared outgoing record per round), the dense copy for
plain Flower ClientApps, the reply validation (early, as each reply arrives,
on streaming grids), the bounds on each update's influence (weight cap,
clipping, direction: ``stamen.transport.bounding``), and the per-round traffic
stats. Strategies inherit it
through :class:`~stamen.strategies.CompressedFedAvg` and keep only their
algorithm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

from stamen.compression import (
    DeltaPublisher,
    DownlinkCodec,
    DownlinkCodecConfig,
    PruningConfig,
    SparsitySchedule,
    compute_masks,
    dense_nbytes,
)
from stamen.config import DefenseSettings
from stamen.contract import CONFIG_KEY, DENSE_KEY, MODEL_KEY, TrainTask, message_nbytes
from stamen.core.errors import InvalidUpdate
from stamen.core.fleet import PolicyGrid, RoundPolicy, StreamingGrid
from stamen.models import load_exchanged_state
from stamen.transport.bounding import BoundedRound, bound_updates
from stamen.transport.deltas import apply_masks_np, to_numpy
from stamen.transport.node_ids import sorted_node_ids
from stamen.transport.outgoing import CheckedReply, HeldModels, OutgoingRecords
from stamen.transport.reply_validation import (
    SentModel,
    ValidUpdate,
    validate_reply,
)
from stamen.transport.stats import Rejection, RoundStats

LOG = logging.getLogger("stamen.transport")


class CompressedTransport:
    """The transport half of a Stamen strategy (the arguments as for ``CompressedFedAvg``)."""

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
        defense: DefenseSettings | None = None,
    ) -> None:
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
        self.defense = defense or DefenseSettings()
        self.rng = np.random.default_rng(seed)
        self.masks: dict[str, np.ndarray] = {}
        self.publisher = DeltaPublisher(self.downlink) if self.downlink.deltas else None
        """With downlink deltas: the replica devices keep, and what each device holds."""
        self.held = HeldModels(self.publisher, max_update_bytes)
        self.stats: dict[int, RoundStats] = {}
        self.last_accepted: list[ValidUpdate] = []
        """The updates the last ``aggregate_train`` accepted (for subclasses that reuse them)."""
        self.stamen_nodes: set[int] = set()
        self._sent: SentModel | None = None
        self._outgoing: dict[tuple[str, TrainTask, bytes], OutgoingRecords] = {}
        self._checked: dict[str, CheckedReply] = {}
        self._tasks: dict[int, Message] = {}
        """This round's training message to each sampled device: a reply must answer its own."""
        self._waited_for_devices = False

    # -- state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What carries over between rounds: the sampling RNG, known Stamen nodes, the masks.

        Per-round traffic stats are not state: a round's record is written when it ends.
        Nor is the wait for devices to connect: a restarted server waits for them again.
        """
        state: dict[str, Any] = {
            "rng": self.rng.bit_generator.state,
            "stamen_nodes": sorted(self.stamen_nodes),
            "masks": dict(self.masks),
        }
        if self.publisher is not None:
            state["downlink"] = self.publisher.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rng.bit_generator.state = state["rng"]
        self.stamen_nodes = {int(node) for node in state["stamen_nodes"]}
        self.masks = {name: np.asarray(mask, bool) for name, mask in state["masks"].items()}
        if self.publisher is not None and "downlink" in state:
            self.publisher.load_state_dict(state["downlink"])

    # -- sending -----------------------------------------------------------------

    def send_train(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> list[Message]:
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
        task = self.task_at(server_round)
        messages = [self._message(node, sent, task, MessageType.TRAIN, stats) for node in node_ids]
        self._tasks = {message.metadata.dst_node_id: message for message in messages}
        LOG.info("round %d: sent the model to %d devices", server_round, len(messages))
        return messages

    def send_evaluate(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> list[Message]:
        """Send the current model to devices for federated evaluation, if enabled."""
        if self.devices_per_evaluation == 0:
            return []
        sent = self._encode(server_round, to_numpy(arrays), publish=False)
        task = self.task.replace(round_num=server_round)
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        return [
            self._message(node, sent, task, MessageType.EVALUATE, stats)
            for node in self.sample(grid, self.devices_per_evaluation)
        ]

    def task_at(self, server_round: int) -> TrainTask:
        """The training task of ``server_round``: its round, and the uplink's warm-up ratio."""
        return self.task.replace(
            round_num=server_round, uplink=self.task.uplink.at_round(server_round)
        )

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
        node_ids = sorted_node_ids(grid)
        while len(node_ids) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            node_ids = sorted_node_ids(grid)
        if len(node_ids) < count and not self._waited_for_devices:
            LOG.warning(
                "only %d of the %d requested devices are connected; sampling all of them",
                len(node_ids),
                count,
            )
        self._waited_for_devices = True
        if not len(node_ids):
            return []
        chosen = self.rng.choice(len(node_ids), size=min(count, len(node_ids)), replace=False)
        return [int(node_ids[i]) for i in sorted(chosen)]

    def _prune(self, server_round: int, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sparsity = self.schedule.sparsity_at(server_round)
        if sparsity <= 0.0:
            return dense
        model = self.model_factory()
        load_exchanged_state(model, dense)
        self.masks = compute_masks(model, sparsity, self.pruning.method)
        return apply_masks_np(dense, self.masks)

    def _encode(
        self, server_round: int, dense: dict[str, np.ndarray], *, publish: bool = True
    ) -> SentModel:
        """Encode the model devices train on; with downlink deltas, publish the replica.

        ``publish=False`` (federated evaluation) sends a model no device keeps.
        """
        if self.publisher is not None and publish:
            published = self.publisher.publish(dense, round_num=server_round, masks=self.masks)
            self._sent = SentModel(
                model_hash=published.model_hash,
                decoded=published.replica,
                dense=dense,
                round_num=server_round,
                payload=self.publisher.payload_from(None),
            )
            return self._sent
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
        payload = self.held.payload_for(node_id, sent, message_type)
        outgoing = self._outgoing_records(sent, task, payload)
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
            stats.downlink_bytes += message_nbytes(message)
            stats.downlink_bytes_fp32 += outgoing.dense_bytes
        return message

    def _outgoing_records(
        self, sent: SentModel, task: TrainTask, payload: bytes
    ) -> OutgoingRecords:
        """The records the devices of a round that get the same payload receive, built once
        and shared by their messages (nothing downstream mutates them); a worker pool then
        also pickles them once."""
        key = (sent.model_hash, task, payload)
        outgoing = self._outgoing.get(key)
        if outgoing is None:
            if any(o.sent.round_num != sent.round_num for o in self._outgoing.values()):
                self._outgoing.clear()  # keep only this round's
            outgoing = OutgoingRecords(sent, task.to_config_record(), payload)
            self._outgoing[key] = outgoing
        return outgoing

    # -- receiving ---------------------------------------------------------------

    def receive_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[SentModel, list[ValidUpdate]] | None:
        """The model sent this round and the replies that passed validation.

        ``None`` when the replies are for a round that was never sent.
        """
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        sent = self._sent
        if sent is None or sent.round_num != server_round:
            LOG.error("round %d: replies arrived for a round that was never sent", server_round)
            return None
        accepted = self.accept_round(server_round, replies, sent, stats)
        stats.accepted = len(accepted)
        self.last_accepted = accepted
        return sent, accepted

    def accept_round(
        self, server_round: int, replies: Iterable[Message], sent: SentModel, stats: RoundStats
    ) -> list[ValidUpdate]:
        """The round's replies to ``sent`` that answer their own task and pass the gate,
        bounded; in sender order, so float sums do not depend on arrival timing (a resumed
        edge run then ends on the same model as an uninterrupted one)."""
        answered: set[int] = set()
        accepted = []
        for reply in sorted(replies, key=lambda reply: reply.metadata.src_node_id):
            if (refusal := self._task_refusal(reply, answered)) is not None:
                stats.uplink_bytes += message_nbytes(reply)
                self.reject(server_round, stats, reply.metadata.src_node_id, refusal)
                continue
            if (update := self.accept_reply(reply, server_round, sent, stats)) is not None:
                accepted.append(update)
        return self.bound(server_round, accepted, stats).kept

    def bound(
        self, server_round: int, updates: list[ValidUpdate], stats: RoundStats
    ) -> BoundedRound:
        """Cap, clip and direction-check a round's accepted updates (``DefenseSettings``)."""
        bounded = bound_updates(updates, self.defense)
        for update, reason in bounded.rejected:
            self.reject(server_round, stats, update.node_id, reason)
        if bounded.clip_bound is not None:
            stats.extra["clip_bound"] = bounded.clip_bound
            stats.extra["clipped"] = float(bounded.clipped)
        if bounded.median_cosine is not None:
            stats.extra["median_cosine"] = bounded.median_cosine
            stats.extra["discounted"] = float(bounded.discounted)
        if bounded.capped_weights:
            stats.extra["capped_weights"] = float(bounded.capped_weights)
        return bounded

    def reject(self, server_round: int, stats: RoundStats, node_id: int, reason: str) -> None:
        """Record and log a refused update."""
        stats.rejections.append(Rejection(node_id, reason))
        LOG.warning("round %d: rejected update from node %d: %s", server_round, node_id, reason)

    def _task_refusal(self, reply: Message, answered: set[int]) -> str | None:
        """Why a reply does not answer this round's task for its sender, if it does not."""
        node_id = reply.metadata.src_node_id
        task = self._tasks.get(node_id)
        if task is None:
            return "this device was not sent a training task this round"
        expected = task.metadata.message_id
        if expected and reply.metadata.reply_to_message_id != expected:
            return "reply does not answer the task this device was sent this round"
        if node_id in answered:
            return "a second reply to the same task"
        answered.add(node_id)
        return None

    def accept_reply(
        self, reply: Message, server_round: int, sent: SentModel, stats: RoundStats
    ) -> ValidUpdate | None:
        """Count a reply's traffic and validate it; a refused one is logged and recorded."""
        node_id = reply.metadata.src_node_id
        stats.uplink_bytes += message_nbytes(reply)
        stats.uplink_bytes_fp32 += dense_nbytes(sent.dense) if not reply.has_error() else 0
        checked = self._checked.pop(reply.metadata.reply_to_message_id, None)
        try:
            if checked is not None and checked.sent is sent and sent.round_num == server_round:
                update = checked.outcome()
            else:
                update = self._validate_reply(reply, server_round, sent)
        except InvalidUpdate as error:
            self.held.note_reply(reply, sent, None)
            self.reject(server_round, stats, node_id, str(error))
            return None
        self.held.note_reply(reply, sent, update)
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
            allow_dense=self.plain_client_compat
            and reply.metadata.src_node_id not in self.stamen_nodes,
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
        self.held.note_reply(reply, sent, None if isinstance(outcome, InvalidUpdate) else outcome)
        self._checked[reply.metadata.reply_to_message_id] = CheckedReply(sent, outcome)
