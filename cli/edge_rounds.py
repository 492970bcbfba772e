"""The edge grid's per-round counts, told once: ``edge-rounds.jsonl``, ``summary.json``, the table.

Each round's :class:`~stamen.server.edge.rounds.EdgeRoundStats` reaches
:class:`EdgeRoundLog` as the round closes. It appends the round's line to
``edge-rounds.jsonl`` then, so the file can be followed during the run. Some
counts change after a round has closed: a late upload is counted against its
own round when it arrives, and so is an upload refused for a closed task. At the
end of the run the log takes one snapshot of every round and writes it three
ways: the ``edge`` section of ``summary.json``, ``edge-rounds.jsonl`` rewritten
whole, and the "Edge rounds" table the server prints. The "answered" column is
the grid's ``participants``, the count the "Rounds" table and ``metrics.jsonl``
show too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stamen.core import write_atomic

EDGE_ROUNDS_FILE = "edge-rounds.jsonl"

COLUMNS = (
    ("round", "group_id"),
    ("sent", "sent"),
    ("answered", "participants"),
    ("timed out", "timed_out"),
    ("dropouts", "dropouts"),
    ("cancelled", "cancelled"),
    ("late", "late_dropped"),
    ("surplus", "surplus_dropped"),
    ("refused up.", "refused_uploads"),
)
"""The "Edge rounds" table: (header, key of the round's line in edge-rounds.jsonl)."""

TOTALS = (
    "timed_out",
    "dropouts",
    "vanished",
    "revoked",
    "late_dropped",
    "surplus_dropped",
    "refused_uploads",
    "over_selected",
)
"""The counts ``summary.json`` sums over the run under ``edge``."""


class EdgeRoundLog:
    """Writes each round's edge counts (deadline misses, late and refused uploads)."""

    def __init__(self, console: Console, out_dir: Path) -> None:
        self.console = console
        self.out_dir = out_dir
        self.path = out_dir / EDGE_ROUNDS_FILE
        self.rounds: list[Any] = []
        self.lines: list[dict[str, Any]] = []
        """The final snapshot, once the run finished: what summary.json and the file hold."""

    def on_edge_round(self, stats: Any) -> None:
        """One line per round to edge-rounds.jsonl, and a console note on misses."""
        self.rounds.append(stats)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(stats.to_dict()) + "\n")
        line = stats.problems()  # the same counts as the jsonl line
        if line is not None:
            self.console.print(f"[yellow]{line}[/]", highlight=False)

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Nothing to do."""

    def on_round(self, record: Any) -> None:
        """Nothing to do: edge counts arrive through :meth:`on_edge_round`."""

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Take the final snapshot (late uploads arrive after their round) and write it:
        ``summary["edge"]`` and ``edge-rounds.jsonl``, the same numbers."""
        self.lines = [stats.to_dict() for stats in self.rounds]
        summary["backend"] = "edge"
        summary["edge"] = {
            **{key: sum(line[key] for line in self.lines) for key in TOTALS},
            "round_seconds": [round(line["seconds"], 4) for line in self.lines],
            "rounds": self.lines,
        }
        text = "".join(json.dumps(line) + "\n" for line in self.lines)
        write_atomic(self.path, text.encode())

    def table(self) -> Table:
        """The final snapshot as a table, one row per exchange (train rounds, evaluations)."""
        table = Table(
            title="Edge rounds",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
            collapse_padding=True,
        )
        for header, _ in COLUMNS:
            table.add_column(header, justify="right", no_wrap=True)
        table.caption = f"the same counts as {EDGE_ROUNDS_FILE} and summary.json"
        evaluations = any(line["message_type"] != "train" for line in self.lines)
        for line in self.lines:
            label = str(line["group_id"])
            if evaluations and line["message_type"] != "train":
                label += f" {line['message_type']}"
            table.add_row(label, *(str(line[key]) for _, key in COLUMNS[1:]))
        return table
