"""Ensemble distillation for model fusion (FedDF), with a student architecture per device tier.

FedDF: Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in
Federated Learning", NeurIPS 2020, https://arxiv.org/abs/2006.07242. Knowledge
distillation loss: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network", 2015, https://arxiv.org/abs/1503.02531.

Each round the server first does what :class:`CompressedFedAvg` does (the example-weighted
mean of the decoded deltas). It then rebuilds every received client model (the model the
device started from plus its delta), takes the mean of their logits on server-held
unlabelled inputs as soft targets, and fine-tunes the average toward them with the KD loss.

Device tiers are FedDF's "architecture prototypes". A tier can be given a student, a
smaller (and lower-precision) model; its devices receive and train the student, and their
updates are averaged into it. Every client model of every tier joins the one ensemble, so
what the small devices learn flows into the global teacher. Each student is then distilled
too: toward the global teacher every ``every_k`` rounds, toward the ensemble otherwise.
Tiers without a student train the teacher.

The distillation maths lives in ``stamen.compression.distillation``; this module only decides
what is distilled into what.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from torch import nn

from stamen.compression import (
    DistillConfig,
    DownlinkCodec,
    QATConfig,
    apply_masks,
    dense_nbytes,
    distill,
    ensemble_logits,
    model_logits,
    remove_masks,
)
from stamen.contract import array_nbytes
from stamen.core.fleet import TieredGrid
from stamen.models import ModelSpec, build_model, count_parameters, exchanged_state
from stamen.models import load_exchanged_state as load_state
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport import (
    RoundStats,
    SentModel,
    ValidUpdate,
    apply_mean_delta,
    to_array_record,
    to_numpy,
)

LOG = logging.getLogger("stamen.strategies")

ModelEvaluator = Callable[[nn.Module], float]
"""Returns the accuracy of a model (any architecture) on the server's test set."""


@dataclass(frozen=True)
class TierStudent:
    """The model one device tier trains instead of the teacher.

    Attributes:
        spec: The student's architecture.
        qat: The fake quantization its devices train with (``None``: plain float).
    """

    spec: ModelSpec
    qat: QATConfig | None = None


class FedDF(CompressedFedAvg):
    """Compressed FedAvg followed by ensemble distillation, with optional tier students.

    Args:
        teacher_spec: The global model's architecture.
        unlabelled: Server-held inputs, shaped like the model's input, without labels.
        distill_config: Temperature, steps, batch size and learning rate of each distillation.
        students: A student per tier name; tiers without one train the teacher.
        every_k: Distil the teacher into the students every ``every_k`` rounds.
        tier_of: Tier of a node id when the grid does not know (``TieredGrid``) it.
        evaluate_model: Reports ``accuracy_before_distill`` and each student's accuracy.
        **kwargs: Everything :class:`CompressedFedAvg` takes.

    Examples:
        >>> from stamen.compression import DistillConfig
        >>> from stamen.contract import TrainTask
        >>> spec = ModelSpec("mlp", (64,), num_classes=10)
        >>> strategy = FedDF(
        ...     teacher_spec=spec,
        ...     unlabelled=np.zeros((32, 64), np.float32),
        ...     distill_config=DistillConfig(steps=10),
        ...     students={"mcu": TierStudent(ModelSpec("mlp", (64,), 10, width=0.25))},
        ...     model_factory=lambda: build_model(spec),
        ...     task=TrainTask(model=spec.name),
        ... )
        >>> sorted(strategy.student_states), strategy.student_params("mcu")
        (['mcu'], 2778)
    """

    def __init__(
        self,
        *,
        teacher_spec: ModelSpec,
        unlabelled: np.ndarray,
        distill_config: DistillConfig,
        students: Mapping[str, TierStudent] | None = None,
        every_k: int = 1,
        tier_of: Callable[[int], str | None] | None = None,
        evaluate_model: ModelEvaluator | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.teacher_spec = teacher_spec
        self.x_unlabelled = torch.from_numpy(np.ascontiguousarray(unlabelled, np.float32))
        self.distill_config = distill_config
        self.students = dict(students or {})
        self.every_k = every_k
        self.tier_of = tier_of
        self.evaluate_model = evaluate_model
        self.student_states = {
            tier: exchanged_state(build_model(student.spec, seed=distill_config.seed))
            for tier, student in self.students.items()
        }
        self._node_tier: dict[int, str | None] = {}
        self._sent_students: dict[str, SentModel] = {}

    def state_dict(self) -> dict[str, Any]:
        """The base state plus every tier student's weights."""
        return {**super().state_dict(), "students": dict(self.student_states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        for tier, student in state["students"].items():
            if tier in self.student_states:
                self.student_states[tier] = {k: np.asarray(v) for k, v in student.items()}

    def student_params(self, tier: str) -> int:
        """Parameters of a tier's student."""
        return count_parameters(build_model(self.students[tier].spec))

    # -- configure ---------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the teacher to teacher-tier devices and each student tier its student."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        stats = self.stats[server_round]
        task = self.task_at(server_round)
        result = []
        for message in messages:
            node = message.metadata.dst_node_id
            tier = self._tier(grid, node)
            self._node_tier[node] = tier
            if tier not in self.students:
                result.append(message)
                continue
            # The base class counted the teacher's bytes for this device; count the student's.
            stats.downlink_bytes -= sum(
                array_nbytes(a) for r in message.content.array_records.values() for a in r.values()
            )
            stats.downlink_bytes_fp32 -= dense_nbytes(self._sent.dense) if self._sent else 0
            sent = self._student_sent(tier, server_round)
            student = self.students[tier]
            student_task = task.replace(
                model=student.spec.name, width=student.spec.width, qat=student.qat
            )
            result.append(self._message(node, sent, student_task, MessageType.TRAIN, stats))
        self._tasks.update({message.metadata.dst_node_id: message for message in result})
        return result

    def _tier(self, grid: Grid, node: int) -> str | None:
        if isinstance(grid, TieredGrid):
            return grid.tier_of(node)
        return self.tier_of(node) if self.tier_of is not None else None

    def _student_sent(self, tier: str, server_round: int) -> SentModel:
        sent = self._sent_students.get(tier)
        if sent is not None and sent.round_num == server_round:
            return sent
        dense = self.student_states[tier]
        encoded = DownlinkCodec(self.downlink).encode(dense, round_num=server_round)
        sent = SentModel(
            model_hash=encoded.model_hash,
            decoded=encoded.decoded,
            dense=dense,
            round_num=server_round,
            payload=encoded.payload,
        )
        self._sent_students[tier] = sent
        return sent

    # -- aggregate ---------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg per architecture, then distil the teacher and every student."""
        replies = list(replies)
        by_tier: dict[str, list[Message]] = {tier: [] for tier in self.students}
        teacher_replies = []
        for reply in replies:
            tier = self._node_tier.get(reply.metadata.src_node_id)
            if tier in by_tier:
                by_tier[str(tier)].append(reply)
            else:
                teacher_replies.append(reply)
        arrays, metrics = super().aggregate_train(server_round, teacher_replies)
        sent = self._sent
        if sent is None or sent.round_num != server_round:
            return arrays, metrics
        stats = self.stats[server_round]
        started = time.perf_counter()
        clients = [self._client_model(self.teacher_spec, sent, u) for u in self.last_accepted]
        student_updates: dict[str, list[ValidUpdate]] = {}
        for tier, tier_replies in by_tier.items():
            tier_sent = self._sent_students.get(tier)
            if tier_sent is None or tier_sent.round_num != server_round:
                continue
            student_updates[tier] = self._validate(server_round, tier_replies, tier_sent, stats)
            spec = self.students[tier].spec
            clients += [self._client_model(spec, tier_sent, u) for u in student_updates[tier]]
        if not clients:
            return arrays, metrics
        targets = ensemble_logits(clients, self.x_unlabelled)
        teacher_state = to_numpy(arrays) if arrays is not None else sent.dense
        teacher = self._distilled_teacher(teacher_state, targets, stats)
        from_teacher = server_round % self.every_k == 0
        teacher_logits = model_logits(teacher, self.x_unlabelled) if from_teacher else targets
        for tier in self.students:
            self._update_student(tier, student_updates.get(tier, []), teacher_logits, stats)
        stats.extra["ensemble_size"] = float(len(clients))
        stats.extra["distill_seconds"] = time.perf_counter() - started
        if metrics is None:
            metrics = MetricRecord({"accepted": stats.accepted})
        return to_array_record(exchanged_state(teacher)), metrics

    def _validate(
        self, server_round: int, replies: list[Message], sent: SentModel, stats: RoundStats
    ) -> list[ValidUpdate]:
        accepted = self.accept_round(server_round, replies, sent, stats)
        stats.accepted += len(accepted)
        return accepted

    def _client_model(self, spec: ModelSpec, sent: SentModel, update: ValidUpdate) -> nn.Module:
        model = build_model(spec)
        load_state(model, {name: sent.decoded[name] + update.delta[name] for name in sent.decoded})
        return model.eval()

    def _distilled_teacher(
        self, state: dict[str, np.ndarray], targets: torch.Tensor, stats: RoundStats
    ) -> nn.Module:
        teacher = build_model(self.teacher_spec)
        load_state(teacher, state)
        if self.evaluate_model is not None:
            stats.extra["accuracy_before_distill"] = self.evaluate_model(teacher)
        if self.masks:
            apply_masks(teacher, self.masks)  # pruned weights stay zero while distilling
        distill(teacher, self.x_unlabelled, targets, self.distill_config)
        if self.masks:
            remove_masks(teacher)
        return teacher

    def _update_student(
        self, tier: str, updates: list[ValidUpdate], targets: torch.Tensor, stats: RoundStats
    ) -> None:
        spec = self.students[tier].spec
        sent = self._sent_students.get(tier)
        state = self.student_states[tier]
        if updates and sent is not None:
            state = apply_mean_delta(sent.dense, updates)
        student = build_model(spec)
        load_state(student, state)
        distill(student, self.x_unlabelled, targets, self.distill_config)
        self.student_states[tier] = exchanged_state(student)
        stats.extra[f"{tier}_updates"] = float(len(updates))
        stats.extra[f"{tier}_params"] = float(count_parameters(student))
        stats.extra[f"{tier}_bytes_fp32"] = float(dense_nbytes(self.student_states[tier]))
        if sent is not None:
            stats.extra[f"{tier}_downlink_bytes"] = float(len(sent.payload))
        if self.evaluate_model is not None:
            stats.extra[f"{tier}_accuracy"] = self.evaluate_model(student)
