"""What the console shows, computed from monitor messages (no Textual here).

:class:`RunView` folds round events into per-round series and log lines;
the formatting helpers render a status and devices as plain text.

Examples:
    >>> from stamen.protos.monitor.v1 import monitor_pb2 as pb
    >>> view = RunView()
    >>> view.apply(pb.RoundEvent(sequence=1, kind=pb.EVENT_KIND_ROUND_ENDED, round=1,
    ...     total_rounds=5, accuracy=0.5, loss=1.2, uplink_bytes=2000, accepted=3,
    ...     participants=[1, 2, 3]))
    ['round 1/5 done: acc 50.0% · loss 1.200 · 3/3 ok · up 2.0 KB · 0.0 s']
    >>> view.accuracy, view.rounds_done
    ([50.0], 1)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from stamen.console.devices import DEVICE_STATE_NAMES
from stamen.protos.monitor.v1 import monitor_pb2 as pb

STATE_NAMES = {
    value: name.removeprefix("RUN_STATE_").lower() for name, value in pb.RunState.items()
}
HEALTH_NAMES = {value: name.removeprefix("HEALTH_").lower() for name, value in pb.Health.items()}
ENDED_STATES = frozenset({"finished", "stopped", "failed"})


END_STYLES = {"finished": "bold green", "stopped": "bold yellow", "failed": "bold red"}
"""How the event log shows the end of a run, by how it ended."""


def header_markup(first: str, second: str, *, alarm: bool, problem: bool) -> str:
    """The console's two header lines as Rich markup: the second in red when the run
    failed or the server refused the console, in yellow while the connection has a
    problem, dim otherwise."""
    style = "bold red" if alarm else "yellow" if problem else "dim"
    return f"[bold]Stamen[/] · {_escape(first)}\n[{style}]{_escape(second)}[/]"


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def human_bytes(count: float) -> str:
    """``1536`` to ``'1.5 KB'``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def clock(seconds: float) -> str:
    """``75.2`` to ``'01:15'`` (hours appear when needed)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class RunView:
    """Per-round series and the event log of one run, as the console sees it."""

    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    uplink: list[float] = field(default_factory=list)
    round: int = 0
    total_rounds: int = 0
    rounds_done: int = 0
    last_sequence: int = 0
    state: str = "unknown"
    stragglers: int = 0
    """Stragglers over the rounds so far, as the run's summary counts them."""
    dropouts: int = 0
    """Dropouts over the rounds so far, as the run's summary counts them."""
    state_message: str = ""
    """The latest state change in words (the run's end, once it has ended)."""

    @property
    def ended(self) -> bool:
        """Whether the run has finished, stopped or failed."""
        return self.state in ENDED_STATES

    def reset(self) -> None:
        """Forget everything (a new connection replays the history)."""
        self.__init__()  # type: ignore[misc]

    def apply(self, event: Any) -> list[str]:
        """Fold one event in; returns the log lines it deserves."""
        self.last_sequence = int(event.sequence)
        self.total_rounds = int(event.total_rounds) or self.total_rounds
        self.round = max(self.round, int(event.round))
        self.state = STATE_NAMES.get(event.state, self.state)
        kind = event.kind
        if kind == pb.EVENT_KIND_ROUND_ENDED:
            return self._round_ended(event)
        if kind == pb.EVENT_KIND_ROUND_STARTED:
            return [f"round {event.round} started: {len(event.participants)} devices"]
        if kind == pb.EVENT_KIND_RUN_STARTED:
            accuracy = (
                f" · initial acc {100 * event.accuracy:.1f}%" if event.HasField("accuracy") else ""
            )
            return [f"{event.message}{accuracy}"]
        if kind == pb.EVENT_KIND_STATE_CHANGED:
            self.state_message = str(event.message)
        return [str(event.message)] if event.message else []

    def _round_ended(self, event: Any) -> list[str]:
        self.rounds_done = max(self.rounds_done, int(event.round))
        self.stragglers += int(event.num_stragglers)
        self.dropouts += int(event.num_dropouts)
        if event.HasField("accuracy"):
            self.accuracy.append(100 * event.accuracy)
        if event.HasField("loss"):
            self.loss.append(event.loss)
        self.uplink.append(float(event.uplink_bytes))
        ratio = f" {event.uplink_compression:.0f}x" if event.HasField("uplink_compression") else ""
        sampled = len(event.participants) or event.accepted + len(event.rejections)
        parts = [
            f"acc {100 * event.accuracy:.1f}%",
            f"loss {event.loss:.3f}",
            f"{event.accepted}/{sampled} ok",
            f"up {human_bytes(event.uplink_bytes)}{ratio}",
            f"{event.duration_seconds:.1f} s",
        ]
        lines = [f"round {event.round}/{event.total_rounds} done: " + " · ".join(parts)]
        if event.num_stragglers:
            lines.append(f"  {event.num_stragglers} stragglers {_ids(event.stragglers)}".rstrip())
        if event.num_dropouts:
            lines.append(f"  {event.num_dropouts} dropouts {_ids(event.dropouts)}".rstrip())
        lines += [f"  rejected node {r.node_id}: {r.reason}" for r in event.rejections]
        if event.tier_accuracy:
            tiers = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(event.tier_accuracy.items()))
            lines.append(f"  per tier: {tiers}")
        if event.distillation:
            values = ", ".join(f"{k} {v:.3g}" for k, v in sorted(event.distillation.items()))
            lines.append(f"  distillation: {values}")
        if event.privacy:
            values = ", ".join(f"{k} {v:.3g}" for k, v in sorted(event.privacy.items()))
            lines.append(f"  privacy: {values}")
        return lines


def _ids(ids: Any) -> str:
    shown = [str(i) for i in list(ids)[:8]]
    return ("(" + ", ".join(shown) + (" …" if len(ids) > 8 else "") + ")") if shown else ""


def header_text(status: Any, view: RunView) -> str:
    """The first header line: round, state, accuracy, elapsed, devices per round, role.

    The accuracy is the latest round's as the event stream tells it (the log's
    latest line), or the status's when no round has ended yet on this stream.
    """
    round_text = f"round {max(status.round, view.round)}/{status.total_rounds or view.total_rounds}"
    if view.accuracy and view.rounds_done >= status.last_round.round:
        accuracy = f"acc {view.accuracy[-1]:.1f}%"
    elif status.HasField("accuracy"):
        accuracy = f"acc {100 * status.accuracy:.1f}%"
    else:
        accuracy = "acc -"
    parts = [
        round_text,
        # The event stream tells a change before the next status poll does.
        view.state if view.state != "unknown" else STATE_NAMES.get(status.state, "unknown"),
        accuracy,
        clock(status.elapsed_seconds),
        f"{status.devices_per_round}/{status.num_devices} dev/round",
    ]
    if status.HasField("deadline_seconds"):
        parts.append(f"deadline {status.deadline_seconds:g}s")
    if status.role:
        parts.append(status.role)
    return " · ".join(parts)


def connection_line(
    server: str, connection: str, problem: str, attempts: int, view: RunView, health: str
) -> str:
    """The second header line: the connection (or why it is down, and the attempt), the
    stragglers and dropouts so far, and the run's health or how it ended."""
    if connection == "closed":
        return f"monitor closed (q quits) · {view.state_message}"
    if problem:
        attempt = f" (attempt {attempts + 1})" if attempts else ""
        return f"{connection}{attempt}: {problem}"
    line = f"{server} · {connection}"
    if view.stragglers or view.dropouts:
        line += f" · {view.stragglers} stragglers, {view.dropouts} dropouts in all"
    if view.ended:
        line += f" · {view.state_message}"
    elif health and "stragglers" not in health:
        # A round's stragglers and dropouts are in the log; the totals are on this line.
        line += f" · {health}"
    return line


def device_row(device: Any, now: float | None = None) -> tuple[str, ...]:
    """One device as table cells."""
    now = time.time() if now is None else now
    seen = f"{max(0.0, now - device.last_seen_unix):.0f}s ago" if device.last_seen_unix else "-"
    return (
        str(device.node_id),
        device.tier or "-",
        DEVICE_STATE_NAMES.get(device.state, "?").replace("_", " "),
        str(device.rounds),
        human_bytes(device.uplink_bytes),
        human_bytes(device.downlink_bytes),
        str(device.rejected),
        seen,
    )
