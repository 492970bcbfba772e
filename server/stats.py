"""One finished round as a record: the strategy's stats, the grid's timing, the evaluation."""

from __future__ import annotations

from stamen.core.fleet import RoundTiming
from stamen.server.reporting import RoundRecord
from stamen.strategies import CompressedFedAvg, FedBuff
from stamen.transport import RoundStats


def round_record(
    strategy: CompressedFedAvg,
    server_round: int,
    accuracy: float,
    loss: float,
    seconds: float,
    timing: RoundTiming | None = None,
) -> RoundRecord:
    """Combine the strategy's traffic stats, the grid's timing and the central evaluation."""
    # A round whose configure step never ran (no devices) still gets a zero record.
    stats = strategy.stats.get(server_round) or RoundStats(server_round)
    if isinstance(strategy, FedBuff):  # asynchronous: an aggregation is a round
        timing = strategy.timing(server_round)
    timing = timing or RoundTiming(dispatched=stats.sampled, participants=stats.sampled)
    return RoundRecord(
        round=server_round,
        accuracy=accuracy,
        loss=loss,
        sampled=stats.sampled,
        accepted=stats.accepted,
        rejected=len(stats.rejections),
        uplink_bytes=stats.uplink_bytes,
        downlink_bytes=stats.downlink_bytes,
        uplink_bytes_fp32=stats.uplink_bytes_fp32,
        downlink_bytes_fp32=stats.downlink_bytes_fp32,
        sparsity=stats.sparsity,
        train_loss=stats.train_loss,
        seconds=seconds,
        plain_clients=stats.plain_clients,
        rejections=[{"node_id": r.node_id, "reason": r.reason} for r in stats.rejections],
        staleness=list(getattr(strategy, "staleness", {}).get(server_round, [])),
        participants=timing.participants,
        stragglers=timing.stragglers,
        dropouts=timing.dropouts,
        surplus=timing.surplus,
        simulated_seconds=timing.seconds,
        clock=timing.clock,
        extra=dict(stats.extra),
    )
