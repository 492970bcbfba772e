"""Per-round traffic and outcome as the server saw it: what was sent, taken and refused."""

from __future__ import annotations

from dataclasses import dataclass, field


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
