"""FedAvg under secure aggregation, with optional central or distributed DP, still compressed.

Secure aggregation: SecAgg (Bonawitz et al., CCS 2017, https://eprint.iacr.org/2017/281)
with SecAgg+'s sparse neighbour graph (Bell et al., CCS 2020,
https://eprint.iacr.org/2020/704). Distributed DP: the Skellam mechanism (Agarwal,
Kairouz and Liu, NeurIPS 2021, https://arxiv.org/abs/2110.04995) on conditionally
rounded integers (Kairouz, Liu and Steinke, ICML 2021, https://arxiv.org/abs/2102.06387).
Central DP: DP-FedAvg's Gaussian noise on the clipped sum (McMahan et al., ICLR 2018).

Each round is four exchanges over the Grid (``stamen.transport.secure_aggregation``).
The compression is kept: the devices send only the round's public random subset of the
unpruned coordinates (``coordinate_ratio``), each as a residue of ``modulus_bits`` bits,
bit-packed, with error feedback keeping what is left out; the downlink is the usual
encoded model. The server learns the sum of the surviving devices' quantized vectors
and applies their mean; it never sees one device's update, so the per-update defenses
of ``[defense]`` cannot run (docs/privacy.md).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from stamen.contract import CONFIG_KEY, MODEL_KEY
from stamen.contract.edge.wire import serialize_records
from stamen.contract.secure import SECAGG_KEY, UPLOAD, UploadParams
from stamen.core.fleet import PolicyGrid, RoundPolicy, StreamingGrid
from stamen.core.rounds import RoundOutcome
from stamen.privacy import (
    DpMechanism,
    announced_coordinates,
    calibrate_noise,
    coordinates_to_bitmap,
    dequantize_sum,
    eligible_mask,
    round_coordinates,
    round_scale,
    scatter,
)
from stamen.strategies.compressed_fedavg import CompressedFedAvg
from stamen.transport import apply_masks_np, to_array_record, to_numpy
from stamen.transport.privacy_budget import PrivacyBudget
from stamen.transport.secure_aggregation import RoundFailed, SecureRound, min_survivors
from stamen.transport.stats import RoundStats

LOG = logging.getLogger("stamen.strategies")

IMPORTANCE_DECAY = 0.5
"""``global-change`` coordinates: each round's weight in the importance of the next rounds
halves, so the chosen coordinates follow where the model is moving now."""

CLIP_FOLLOWS_MEAN = 3.0
"""Without DP, the next round's L2 clip is this multiple of the last mean update's norm:
a device's update in a non-IID round is typically 2-3 times longer than the mean, and
what is clipped is not lost but carried by error feedback."""


class SecureFedAvg(CompressedFedAvg):
    """FedAvg whose server learns only the sum of each round's quantized, masked updates.

    Args:
        modulus_bits: each sent coordinate is a residue modulo ``2**modulus_bits``.
        coordinate_ratio: the share of unpruned coordinates sent each round.
        coordinate_rule: ``random`` (a seeded subset, no index travels) or ``global-change``
            (half where the global model moved most lately, half random; the server
            announces them as a bitmap in the upload message).
        threshold_fraction: Shamir threshold, as a share of each neighbourhood (> 1/2),
            and the share of the round's devices whose uploads must survive.
        dropout_tolerance: the dropout the neighbour graph is sized for.
        clip: the L2 clip of a device's sent values (with DP, fixed; without, the
            first round's, then following the mean update).
        dp: ``None`` (no DP), ``gaussian`` (central) or ``skellam`` (distributed).
        noise_multiplier: the DP noise, in sensitivities (ignored without DP).
        target_epsilon: where > 0, the noise multiplier that spends it over ``rounds``.
        delta: the delta at which epsilon is reported.
        num_devices, rounds: the fleet and the run, for the sampling rate and calibration.
        **transport: as for :class:`CompressedFedAvg`.
    """

    def __init__(
        self,
        *,
        modulus_bits: int = 16,
        coordinate_ratio: float = 0.1,
        coordinate_rule: str = "random",
        threshold_fraction: float = 0.6,
        dropout_tolerance: float = 0.3,
        clip: float = 1.0,
        dp: DpMechanism | None = None,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        delta: float = 1e-5,
        num_devices: int = 100,
        rounds: int = 20,
        **transport: Any,
    ) -> None:
        super().__init__(**transport)
        self.modulus_bits = modulus_bits
        self.coordinate_ratio = coordinate_ratio
        self.coordinate_rule = coordinate_rule
        self.importance: np.ndarray | None = None
        """``global-change``: the decayed sum of the applied updates' magnitudes, per coordinate."""
        self.threshold_fraction = threshold_fraction
        self.dropout_tolerance = dropout_tolerance
        self.clip = clip
        self.dp = dp
        sampling_rate = min(1.0, self.devices_per_round / num_devices)
        if dp is not None and target_epsilon > 0:
            noise_multiplier = self._calibrate(dp, target_epsilon, delta, sampling_rate, rounds)
        self.budget = (
            PrivacyBudget(
                noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, delta=delta
            )
            if dp is not None
            else None
        )
        self.noise_rng = np.random.default_rng([self.task.seed, 0x5EC])

    def _calibrate(
        self, dp: DpMechanism, epsilon: float, delta: float, q: float, rounds: int
    ) -> float:
        z = calibrate_noise(
            DpMechanism.GAUSSIAN,
            target_epsilon=epsilon,
            delta=delta,
            sampling_rate=q,
            rounds=rounds,
        )
        if (
            dp is DpMechanism.SKELLAM
        ):  # the rounded sensitivity and its L1 bound, at a typical round
            count = max(1, round(self.coordinate_ratio * self._coordinate_pool()))
            scale = round_scale(
                bits=self.modulus_bits,
                devices=self.devices_per_round,
                coordinate_bound=self.clip,
                count=count,
                clip=self.clip,
                noise_multiplier=z,
            )
            z = calibrate_noise(
                dp,
                target_epsilon=epsilon,
                delta=delta,
                sampling_rate=q,
                rounds=rounds,
                sensitivity=scale.norm_bound,
                count=count,
            )
        LOG.info(
            "noise multiplier %.4f spends epsilon %.2f (delta %g) in %d rounds",
            z,
            epsilon,
            delta,
            rounds,
        )
        return z

    def _coordinate_pool(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.model_factory().state_dict().values())

    def summary(self) -> None:
        """Log the strategy's settings."""
        LOG.info(
            "SecureFedAvg: %d devices/round, %.0f%% of coordinates, %d bits, threshold %.2f, DP %s",
            self.devices_per_round,
            100 * self.coordinate_ratio,
            self.modulus_bits,
            self.threshold_fraction,
            "off" if self.dp is None else f"{self.dp.value} z={self.budget.noise_multiplier:.3f}",  # type: ignore[union-attr]
        )

    # -- RoundStrategy -----------------------------------------------------------------

    def begin(self, grid: Grid, arrays: ArrayRecord, first_round: int) -> None:
        """Nothing to prepare: each round makes its own keys."""

    def end(self) -> None:
        """Nothing to release."""

    def run_round(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, timeout: float
    ) -> RoundOutcome | None:
        """One round: advertise keys, share keys, masked upload, unmask; then the mean update."""
        stats = self.stats.setdefault(server_round, RoundStats(server_round))
        sent = self._encode(server_round, self._prune(server_round, to_numpy(arrays)))
        if isinstance(grid, PolicyGrid):
            grid.set_round_policy(RoundPolicy(quorum=None, deadline=self.deadline))
        if isinstance(grid, StreamingGrid):
            grid.on_each_reply(None)
        node_ids = self.sample(grid, self.devices_per_round)
        stats.sampled = len(node_ids)
        stats.sparsity = self.schedule.sparsity_at(server_round) if self.masks else 0.0
        secure = SecureRound(
            round_num=server_round,
            run_seed=self.task.seed,
            threshold_fraction=self.threshold_fraction,
            dropout_tolerance=self.dropout_tolerance,
            min_survivors=min_survivors(len(node_ids), self.threshold_fraction),
        )
        secure.take_advertised(
            self._exchange(grid, secure.advertise_messages(node_ids), timeout, stats), set(node_ids)
        )
        secure.take_shares(self._exchange(grid, secure.share_messages(), timeout, stats))
        shapes = {name: tuple(value.shape) for name, value in sent.dense.items()}
        coordinates, bitmap = self._coordinates(server_round, shapes)
        params = self._upload_params(server_round, max(1, len(secure.shared())), coordinates.size)
        params = dataclasses.replace(params, coordinates=bitmap)
        uploads = [
            self._upload(node, sent, secure, params, stats) for node in sorted(secure.shared())
        ]
        secure.take_uploads(
            self._exchange(grid, uploads, timeout, stats), coordinates.size, self.modulus_bits
        )
        try:
            secure.take_unmask(self._exchange(grid, secure.unmask_messages(), timeout, stats))
            total = secure.unmasked_sum(self.modulus_bits)
        except RoundFailed as failure:
            LOG.error(
                "round %d: secure aggregation failed: %s; the model is unchanged",
                server_round,
                failure,
            )
            self._finish_stats(stats, secure, failed=str(failure))
            return RoundOutcome(
                None, MetricRecord({"accepted": 0, "rejected": len(stats.rejections)})
            )
        survivors = len(secure.uploads)
        summed = dequantize_sum(total, self.modulus_bits, params.step)
        if self.dp is DpMechanism.GAUSSIAN:  # central: the server adds the noise to the sum
            sigma = self.budget.noise_multiplier * params.norm_bound * params.step  # type: ignore[union-attr]
            summed = summed + self.noise_rng.normal(0.0, sigma, summed.shape)
        mean = summed / survivors
        delta = scatter(mean, coordinates, shapes)
        new_model = self.step(sent.dense, delta)
        if self.masks:
            new_model = apply_masks_np(new_model, self.masks)
        if not all(np.isfinite(v).all() for v in new_model.values()):
            self._finish_stats(stats, secure, failed="non-finite aggregate")
            return RoundOutcome(
                None, MetricRecord({"accepted": 0, "rejected": len(stats.rejections)})
            )
        if self.importance is not None:
            self.importance *= IMPORTANCE_DECAY
            self.importance[coordinates] += np.abs(mean)
        if self.dp is None:
            norm = float(np.linalg.norm(mean))
            self.clip = max(1e-6, CLIP_FOLLOWS_MEAN * norm) if norm > 0 else self.clip
        elif self.budget is not None:
            mechanism = self.dp
            self.budget.spend(
                stats, mechanism, sensitivity=params.norm_bound, count=coordinates.size
            )
        self._finish_stats(stats, secure)
        stats.accepted = survivors
        return RoundOutcome(
            to_array_record(new_model),
            MetricRecord({"accepted": survivors, "rejected": len(stats.rejections)}),
        )

    # -- helpers -------------------------------------------------------------------------

    def _coordinates(
        self, server_round: int, shapes: dict[str, tuple[int, ...]]
    ) -> tuple[np.ndarray, bytes]:
        """The round's coordinates, and the bitmap that announces them (empty: the seeded rule)."""
        if self.coordinate_rule != "global-change":
            chosen = round_coordinates(
                shapes,
                self.masks,
                ratio=self.coordinate_ratio,
                seed=self.task.seed,
                round_num=server_round,
            )
            return chosen, b""
        eligible = eligible_mask(shapes, self.masks)
        if self.importance is None or self.importance.size != eligible.size:
            self.importance = np.zeros(eligible.size, np.float64)
        chosen = announced_coordinates(
            self.importance,
            eligible,
            ratio=self.coordinate_ratio,
            seed=self.task.seed,
            round_num=server_round,
        )
        return chosen, coordinates_to_bitmap(chosen, eligible.size)

    def _upload_params(self, server_round: int, devices: int, count: int) -> UploadParams:
        z = self.budget.noise_multiplier if self.budget is not None else 0.0
        distributed = self.dp is DpMechanism.SKELLAM
        scale = round_scale(
            bits=self.modulus_bits,
            devices=devices,
            coordinate_bound=self.clip,
            count=count,
            clip=self.clip,
            noise_multiplier=z if distributed else 0.0,
        )
        # Any min_survivors - 1 devices' shares add up to the whole noise (docs/privacy.md).
        sharers = max(1, min_survivors(devices, self.threshold_fraction) - 1)
        variance = (z * scale.norm_bound) ** 2 / sharers if distributed else 0.0
        return UploadParams(
            round_num=server_round,
            bits=self.modulus_bits,
            ratio=self.coordinate_ratio,
            run_seed=self.task.seed,
            step=scale.step,
            coordinate_bound=scale.coordinate_bound,
            clip=self.clip,
            norm_bound=scale.norm_bound,
            noise_variance=variance,
        )

    def _upload(
        self, node: int, sent: Any, secure: SecureRound, params: UploadParams, stats: RoundStats
    ) -> Message:
        # The whole model: a secure round's replies do not show which model each device holds.
        task = self.task.replace(round_num=params.round_num)
        outgoing = self._outgoing_records(sent, task, sent.payload)
        stats.downlink_bytes_fp32 += outgoing.dense_bytes
        return Message(
            content=RecordDict(
                {
                    MODEL_KEY: outgoing.model,
                    CONFIG_KEY: outgoing.config,
                    SECAGG_KEY: secure.upload_record(node, params),
                }
            ),
            dst_node_id=node,
            message_type=UPLOAD,
            group_id=str(params.round_num),
        )

    def _exchange(
        self, grid: Grid, messages: list[Message], timeout: float, stats: RoundStats
    ) -> list[Message]:
        """Send one exchange and count its traffic both ways: the serialized records, keys and
        shares included (``message_nbytes`` counts array payloads only)."""
        if not messages:
            return []
        stats.downlink_bytes += sum(wire_nbytes(m) for m in messages)
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        stats.uplink_bytes += sum(wire_nbytes(r) for r in replies)
        return replies

    def _finish_stats(
        self, stats: RoundStats, secure: SecureRound, failed: str | None = None
    ) -> None:
        for node, reason in secure.rejections:
            self.reject(stats.round_num, stats, node, reason)
        stats.extra["secagg_advertised"] = float(len(secure.keys))
        stats.extra["secagg_shared"] = float(len(secure.shared()))
        stats.extra["secagg_uploaded"] = float(len(secure.uploads))
        stats.extra["secagg_degree"] = float(secure.degree)
        stats.extra["secagg_failed"] = float(failed is not None)
        if self.budget is not None and "epsilon" not in stats.extra:
            stats.extra["epsilon"] = self.budget.epsilon()
            stats.extra["dp_delta"] = self.budget.delta

    def state_dict(self) -> dict[str, Any]:
        """The transport's state, the clip that follows the mean, and the privacy spent."""
        state = super().state_dict()
        state["secure"] = {"clip": self.clip, "noise_rng": self.noise_rng.bit_generator.state}
        if self.importance is not None:
            state["secure"]["importance"] = self.importance.copy()
        if self.budget is not None:
            state["secure"]["budget"] = self.budget.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        secure = state.get("secure", {})
        self.clip = float(secure.get("clip", self.clip))
        if "importance" in secure:
            self.importance = np.asarray(secure["importance"], np.float64)
        if "noise_rng" in secure:
            self.noise_rng.bit_generator.state = secure["noise_rng"]
        if self.budget is not None and "budget" in secure:
            self.budget.load_state_dict(secure["budget"])


def wire_nbytes(message: Message) -> int:
    """A message's records as they travel serialized (an error reply: none)."""
    return 0 if message.has_error() else len(serialize_records(message.content))
