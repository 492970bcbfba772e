"""Rich rendering for the CLI: a live progress bar, the results table, the resolved config."""

from __future__ import annotations

from typing import Any

from flwr.app import Message
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from stamen.config import StamenConfig
from stamen.server.reporting import RoundRecord


def human_bytes(count: float) -> str:
    """``1536`` to ``'1.5 KB'``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return (
                f"{count:.0f} {unit}" if unit == "B" or abs(count) >= 100 else f"{count:.1f} {unit}"
            )
        count /= 1000
    return f"{count:.0f} GB"


def human_seconds(seconds: float) -> str:
    """``5400`` to ``'1.5 h'``: simulated device time at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def ratio(dense: int, actual: int) -> str:
    """``'71.3x'``, or a dash when nothing was sent."""
    return f"{dense / actual:.1f}x" if actual else "-"


class ProgressReporter:
    """Shows one progress bar over rounds, with the latest accuracy and traffic."""

    def __init__(self, console: Console, devices_per_round: int | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:>7}"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.devices_per_round = devices_per_round
        self.task_id: Any = None
        self.device_task_id: Any = None
        self.total_rounds = 0
        self.uplink = 0
        self.uplink_fp32 = 0
        self.stragglers = 0
        self.dropouts = 0
        self.failed = 0

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Start the bars: rounds, and devices within the round where they are visible."""
        self.progress.start()
        self.total_rounds = total_rounds
        self.task_id = self.progress.add_task(
            "round", total=total_rounds, status=f"acc {100 * initial_accuracy:5.1f}%"
        )
        if self.devices_per_round is not None:
            self.device_task_id = self.progress.add_task(
                "devices", total=self.devices_per_round, status="training"
            )

    def on_device_reply(self, instruction: Message, reply: Message) -> None:
        """One device of the current round has answered or dropped out (a grid hook)."""
        if self.device_task_id is None or instruction.metadata.message_type != "train":
            return
        if reply.has_error():
            self.failed += 1
        self.progress.update(self.device_task_id, advance=1, status=self._device_status())

    def _device_status(self) -> str:
        failed = f" · [yellow]{self.failed} dropped or failed[/]" if self.failed else ""
        return f"training{failed}"

    def on_round(self, record: RoundRecord) -> None:
        """Advance the bar and show the round's outcome."""
        self.uplink += record.uplink_bytes
        self.uplink_fp32 += record.uplink_bytes_fp32
        self.stragglers += record.stragglers
        self.dropouts += record.dropouts
        late = (
            f" · [yellow]{self.stragglers} stragglers, {self.dropouts} dropouts[/]"
            if self.stragglers or self.dropouts
            else ""
        )
        rejected = f" · [red]{record.rejected} rejected[/]" if record.rejected else ""
        clock = f" · sim {human_seconds(record.clock)}" if record.clock else ""
        if "epsilon" in record.extra:
            clock += f" · ε {record.extra['epsilon']:.2f}"
        status = (
            f"acc {100 * record.accuracy:5.1f}% · up {human_bytes(self.uplink)} "
            f"({ratio(self.uplink_fp32, self.uplink)} smaller){clock}{late}{rejected}"
        )
        self.progress.update(self.task_id, advance=1, status=status)
        self.failed = 0
        if self.device_task_id is not None and record.round >= self.total_rounds:
            self.progress.remove_task(self.device_task_id)
            self.device_task_id = None
        elif self.device_task_id is not None:
            self.progress.reset(
                self.device_task_id, total=self.devices_per_round, status="training"
            )

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Stop the bar."""
        self.stop()

    def stop(self) -> None:
        """Stop the bar (also on errors and Ctrl-C)."""
        self.progress.stop()


def results_table(records: list[RoundRecord]) -> Table:
    """Accuracy, bytes and devices per round, with the ratios against dense FP32 FedAvg.

    Columns that would be empty for this run (rejections, the simulated clock)
    are left out, so the table fits an 80-column terminal.
    """
    table = Table(
        title="Rounds",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    clocked = any(record.clock for record in records)
    rejected = any(record.rejected for record in records)
    columns = ["round", "accuracy", "uplink", "up ×", "down ×", "sparse", "answered"]
    columns += ["late/lost", "sim"] if clocked else []
    columns += ["rejected"] if rejected else []
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.caption = "×: times fewer bytes than FP32 FedAvg for the same devices"
    for record in records:
        row = [
            str(record.round),
            f"{100 * record.accuracy:.2f}%",
            human_bytes(record.uplink_bytes),
            ratio(record.uplink_bytes_fp32, record.uplink_bytes),
            ratio(record.downlink_bytes_fp32, record.downlink_bytes),
            f"{100 * record.sparsity:.0f}%",
            f"{record.participants}/{record.sampled}",
        ]
        if clocked:
            row += [f"{record.stragglers}/{record.dropouts}", human_seconds(record.clock)]
        if rejected:
            row.append(str(record.rejected))
        table.add_row(*row)
    return table


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The headline numbers of a finished run."""
    accuracy = summary.get("final_accuracy")
    lines = [
        f"final accuracy [bold]{100 * accuracy:.2f}%[/] after {summary['rounds']} rounds"
        if accuracy is not None
        else "no round finished",
        f"uplink   {human_bytes(summary['uplink_bytes'])} vs "
        f"{human_bytes(summary['uplink_bytes_fp32'])} for FP32 FedAvg: "
        f"[bold]{ratio(summary['uplink_bytes_fp32'], summary['uplink_bytes'])}[/] smaller",
        f"downlink {human_bytes(summary['downlink_bytes'])} vs "
        f"{human_bytes(summary['downlink_bytes_fp32'])} for FP32 FedAvg: "
        f"[bold]{ratio(summary['downlink_bytes_fp32'], summary['downlink_bytes'])}[/] smaller",
        f"wall time {summary['wall_seconds']:.1f} s on the {summary.get('backend', '?')} backend",
    ]
    if summary.get("simulated_seconds"):
        lines.append(
            f"simulated device time {human_seconds(summary['simulated_seconds'])}: "
            f"{summary.get('stragglers', 0)} stragglers, {summary.get('dropouts', 0)} dropouts"
        )
    if summary.get("rejected_updates"):
        lines.append(
            f"[red]{summary['rejected_updates']} updates rejected[/] (reasons in metrics.jsonl)"
        )
    return lines


def print_config(console: Console, config: StamenConfig) -> None:
    """Print the resolved config as TOML that ``--config`` accepts."""
    console.print(to_toml(config.to_dict()), highlight=False, markup=False)


def to_toml(values: dict[str, Any]) -> str:
    """A flat-sections TOML rendering of a config dict."""

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(value)

    lines = [f"{k} = {literal(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for section, body in values.items():
        if isinstance(body, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {literal(v)}" for k, v in body.items() if v is not None)
    return "\n".join(lines)
