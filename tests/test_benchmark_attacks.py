"""The attack benchmark's smoke run, ``benchmarks/attacks.py --quick``: kept out of the
default run (``pytest -m benchmark tests/test_benchmark_attacks.py``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "attacks.py"


@pytest.mark.benchmark
@pytest.mark.timeout(1200)
def test_quick_attack_benchmark_tables_every_attack_against_attack_free(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--runs", str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((runs / "attacks.json").read_text())
    assert result["rounds"] == 3 and result["seeds"] == [0]
    rows = {(row["attack"], row["fraction"]): row for row in result["comparison"]["attacks"]}
    assert set(rows) == {(a, f) for a in ("scale", "dense") for f in (0.1, 0.2)} | {("none", 0.0)}
    clean = rows[("none", 0.0)]
    assert clean["model_finite"] and clean["rejected"] == 0 and clean["passed"] is None
    assert clean["tail_accuracy"]["mean"] > 20  # three rounds of LeNet on MNIST learn something
    for key, row in rows.items():
        if key != ("none", 0.0):
            assert isinstance(row["passed"], bool) and row["gap_points"] is not None
            assert sum(row["rejections_by_reason"].values()) == row["rejected"]
    table = (runs / "attacks.md").read_text()
    assert "| scale ×1000 | 10% |" in table and "| dense ×1000 | 20% |" in table
    assert all("error" not in run for run in result["runs"])
    # A second invocation reuses the finished runs instead of training again.
    again = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--runs", str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (
        again.returncode == 0
        and json.loads((runs / "attacks.json").read_text())["runs"] == (result["runs"])
    )
