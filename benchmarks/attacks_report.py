"""The figures of ``benchmarks/attacks.py``: read back from its runs, compared, and tabled.

A rejection reason is counted by its kind, with numbers and hashes left out:

    >>> reason_kind("update norm 12.5 exceeds the bound 0.31")
    'update norm # exceeds the bound #'
    >>> reason_kind("update is for round 1, this is round 2")
    'update is for round #, this is round #'
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

TAIL_ROUNDS = 5
"""Accuracy is judged on the mean of the last rounds: one round of non-IID FL is noisy."""
TARGET_POINTS = 2.0
"""An attacked run may lose at most this much accuracy against attack-free."""
COST_POINTS = 0.3
"""This build's defaults may cost at most this much attack-free accuracy against --before."""

_VARIABLE = re.compile(r"\b[0-9a-f]{12,}\b|(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def reason_kind(reason: str) -> str:
    """A rejection reason without its numbers and hashes."""
    return _VARIABLE.sub("#", reason)


def figures(run_dir: Path) -> dict[str, Any]:
    """What one finished run measured, read back from its results folder."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reasons = Counter(reason_kind(r["reason"]) for rec in records for r in rec["rejections"])
    return {
        "final_accuracy": summary["final_accuracy"],
        "tail_accuracy": statistics.fmean(r["accuracy"] for r in records[-TAIL_ROUNDS:]),
        "rejected": summary["rejected_updates"],
        "rejections_by_reason": dict(reasons.most_common()),
        "model_finite": all(math.isfinite(r["loss"]) for r in records)
        and model_file_finite(run_dir / "model.pt"),
        "wall_seconds": summary["wall_seconds"],
    }


def model_file_finite(path: Path) -> bool:
    """Whether the run's final global model holds only finite weights."""
    import torch

    if not path.is_file():
        return True  # a build that saves no model: the per-round losses decide
    state = torch.load(path, map_location="cpu", weights_only=True)["state"]
    return all(bool(torch.isfinite(tensor).all()) for tensor in state.values())


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (none from one seed), in points."""
    points = [100 * v for v in values]
    return {
        "mean": statistics.fmean(points),
        "std": statistics.stdev(points) if len(points) > 1 else None,
    }


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (attack, fraction): accuracy over seeds, the gap to attack-free paired by seed,
    and whether the target is met; then the cost of this build's defaults (``--before``)."""
    ok = [r for r in rows if "error" not in r]
    clean = {r["seed"]: r for r in ok if r["attack"] == "none" and r["build"] == "this"}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in ok:
        if row["build"] == "this":
            groups.setdefault((row["attack"], row["fraction"]), []).append(row)
    table = []
    for (attack, fraction), members in groups.items():
        gaps = [
            100 * (m["tail_accuracy"] - clean[m["seed"]]["tail_accuracy"])
            for m in members
            if m["seed"] in clean
        ]
        gap = statistics.fmean(gaps) if gaps else None
        finite = all(m["model_finite"] for m in members)
        reasons: Counter[str] = Counter()
        for m in members:
            reasons.update(m["rejections_by_reason"])
        passed = finite and gap is not None and gap >= -TARGET_POINTS
        table.append(
            {
                "attack": attack,
                "scale": members[0]["scale"],
                "fraction": fraction,
                "seeds": sorted(m["seed"] for m in members),
                "final_accuracy": spread([m["final_accuracy"] for m in members]),
                "tail_accuracy": spread([m["tail_accuracy"] for m in members]),
                "gap_points": gap,
                "worst_seed_gap_points": min(gaps) if gaps else None,
                "model_finite": finite,
                "rejected": sum(m["rejected"] for m in members),
                "rejections_by_reason": dict(reasons.most_common()),
                "passed": None if attack == "none" else passed,
            }
        )
    return {"attacks": table, "before": cost_of_defaults(ok, clean)}


def cost_of_defaults(
    rows: list[dict[str, Any]], clean: dict[int, dict[str, Any]]
) -> dict[str, Any] | None:
    """Attack-free accuracy of this build minus the earlier build's, paired by seed."""
    paired = [r for r in rows if r["build"] == "before" and r["seed"] in clean]
    if not paired:
        return None
    diffs = [100 * (clean[r["seed"]]["tail_accuracy"] - r["tail_accuracy"]) for r in paired]
    cost = statistics.fmean(diffs)
    return {
        "seeds": [r["seed"] for r in paired],
        "before_tail_accuracy": spread([r["tail_accuracy"] for r in paired]),
        "before_final_accuracy": spread([r["final_accuracy"] for r in paired]),
        "this_minus_before_points": cost,
        "per_seed_points": diffs,
        "passed": cost >= -COST_POINTS,
    }


def to_markdown(result: dict[str, Any]) -> str:
    """The README tables."""
    seeds = " ".join(map(str, result["seeds"]))
    lines = [
        f"MNIST, Dirichlet(0.3), 100 devices, 20 a round, LeNet, `--preset edge` with nothing "
        f"tuned, fleet {result['fleet']}, {result['rounds']} rounds, seeds {seeds}. Accuracy: "
        f"mean of the last {TAIL_ROUNDS} rounds, mean ± std over seeds. Target: every attacked "
        f"run within {TARGET_POINTS:g} points of attack-free (gap paired by seed), model finite.",
        "",
        f"| attack | attackers | accuracy (last {TAIL_ROUNDS}) | final accuracy | gap (points) "
        "| worst seed | model finite | rejected | rejections by reason | target |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for row in result["comparison"]["attacks"]:
        label = (
            row["attack"]
            if row["attack"] in ("none", "nan")
            else (f"{row['attack']} ×{row['scale']:g}")
        )
        verdict = {None: "-", True: "pass", False: "**FAIL**"}[row["passed"]]
        lines.append(
            f"| {label} | {100 * row['fraction']:.0f}% | {pm(row['tail_accuracy'])} "
            f"| {pm(row['final_accuracy'])} | {signed(row['gap_points'])} "
            f"| {signed(row['worst_seed_gap_points'])} | {'yes' if row['model_finite'] else 'NO'} "
            f"| {row['rejected']} | {reasons_cell(row['rejections_by_reason'])} | {verdict} |"
        )
    before = result["comparison"]["before"]
    if before is not None:
        verdict = "pass" if before["passed"] else "**FAIL**"
        lines += [
            "",
            f"Attack-free, this build against the earlier build in `{result['before']}` "
            f"(seeds {' '.join(map(str, before['seeds']))}): this − before = "
            f"{signed(before['this_minus_before_points'])} points (per seed: "
            f"{', '.join(signed(d) for d in before['per_seed_points'])}); "
            f"target at least −{COST_POINTS:g}: {verdict}. Earlier build: "
            f"{pm(before['before_tail_accuracy'])} (last {TAIL_ROUNDS}), "
            f"{pm(before['before_final_accuracy'])} (final).",
        ]
    failed = [r for r in result["runs"] if "error" in r]
    if failed:
        lines += ["", "Failed runs (left out of the table):", ""]
        lines += [f"- `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def pm(value: dict[str, float | None]) -> str:
    """``97.12 ± 0.31%``, or ``97.12%`` from one seed."""
    mean, std = value["mean"], value["std"]
    assert mean is not None
    return f"{mean:.2f}%" if std is None else f"{mean:.2f} ± {std:.2f}%"


def signed(value: float | None) -> str:
    """A difference in points, or ``-`` where there is none."""
    return "-" if value is None else f"{value:+.2f}"


def reasons_cell(reasons: dict[str, int]) -> str:
    """The two most frequent rejection reasons with their counts, fit for a table cell."""
    if not reasons:
        return "-"
    shown = [f"{count}× {reason.replace('|', '/')}" for reason, count in list(reasons.items())[:2]]
    more = len(reasons) - len(shown)
    return "; ".join(shown) + (f"; {more} more" if more > 0 else "")
