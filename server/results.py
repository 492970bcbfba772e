"""Write a run's results: ``metrics.jsonl``, ``summary.json`` and a plot.

``metrics.jsonl`` gets one line as each round ends, so an interrupted run
keeps every round it finished.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stamen.models import GLOBAL_MODEL_FILE, SavedModel, save_model_file, tier_model_file
from stamen.server.reporting import RoundRecord

LOG = logging.getLogger("stamen.server")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "rounds.png"


class ResultsWriter:
    """A reporter that writes results into ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.records: list[RoundRecord] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = out_dir / METRICS_FILE
        self._metrics.write_text("", encoding="utf-8")

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        """Nothing to write yet."""

    def on_round(self, record: RoundRecord) -> None:
        """Append the round's line and flush it to disk."""
        self.records.append(record)
        with self._metrics.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record.to_dict()) + "\n")

    def on_models(self, models: list[SavedModel]) -> None:
        """Save the run's final models: ``model.pt`` and ``model-<tier>.pt`` per student."""
        for saved in models:
            name = tier_model_file(saved.tier) if saved.tier else GLOBAL_MODEL_FILE
            save_model_file(saved, self.out_dir / name)

    def on_finish(self, summary: dict[str, Any]) -> None:
        """Write the summary and the plot."""
        (self.out_dir / SUMMARY_FILE).write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
        try:
            plot_rounds(self.records, self.out_dir / PLOT_FILE)
        except ImportError:
            LOG.warning(
                "matplotlib is not installed; skipping %s (pip install 'stamen[simulation]')",
                PLOT_FILE,
            )


def plot_rounds(records: list[RoundRecord], path: Path) -> None:
    """Accuracy and cumulative megabytes per round, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in records]
    fig, (acc_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 4))
    measured = [r for r in records if r.evaluated]
    acc_ax.plot(
        [r.round for r in measured], [100 * r.accuracy for r in measured], marker="o", markersize=3
    )
    acc_ax.set(xlabel="round", ylabel="test accuracy (%)", title="Global model accuracy")
    acc_ax.grid(alpha=0.3)
    for axis in (acc_ax, bytes_ax):
        axis.xaxis.get_major_locator().set_params(integer=True)
    uplink_fp32 = [r.uplink_bytes_fp32 for r in records]
    downlink_fp32 = [r.downlink_bytes_fp32 for r in records]
    series = [
        ("uplink", [r.uplink_bytes for r in records], "-"),
        ("downlink", [r.downlink_bytes for r in records], "-"),
    ]
    if uplink_fp32 == downlink_fp32:
        series.append(("FP32 FedAvg, each way", uplink_fp32, ":"))
    else:
        series += [
            ("uplink, FP32 FedAvg", uplink_fp32, ":"),
            ("downlink, FP32 FedAvg", downlink_fp32, ":"),
        ]
    for label, values, style in series:
        bytes_ax.plot(rounds, np.cumsum(values) / 1e6, style, label=label)
    bytes_ax.set(xlabel="round", ylabel="cumulative MB", title="Bytes on the wire", yscale="log")
    bytes_ax.legend()
    bytes_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
