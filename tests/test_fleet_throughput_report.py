"""The throughput benchmark's tables over repeated runs (``benchmarks/fleet_throughput_report.py``):
medians with their range, ratios of medians, failures kept apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def fleet_throughput_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fleet_throughput_report", BENCHMARKS / "fleet_throughput_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(path: str, rate: float, first: float = 2.0, peak: float = 1000.0) -> dict[str, Any]:
    return {
        "path": path,
        "build": "this",
        "devices": 10000,
        "per_round": 1000,
        "updates_per_second": rate,
        "first_round_seconds": first,
        "peak_memory_mib": peak,
    }


def test_repeated_runs_table_as_medians_with_their_range_and_ratios_of_medians() -> None:
    module = fleet_throughput_report()
    failed = {
        "path": "stamen-local-edge",
        "build": "this",
        "devices": 10000,
        "per_round": 1000,
        "error": "exit code 1",
    }
    runs = [
        run("flower-ray", 40.0),
        run("stamen-local-fp32", 300.0, first=3.3, peak=1200.0),
        failed,
        run("flower-ray", 50.0),
        run("stamen-local-fp32", 500.0, first=2.0, peak=1100.0),
        run("stamen-local-edge", 350.0),
        run("flower-ray", 45.0),
        run("stamen-local-fp32", 450.0, first=2.5, peak=1150.0),
        run("stamen-local-edge", 250.0),
        {**failed, "path": "stamen-ray"},
    ]
    table = module.to_markdown(runs)
    assert "| flower-ray | 45 (40-50) | 1.0x |" in table
    # 450 / 45: the medians' ratio; the median first round; the highest peak.
    assert "| stamen-local-fp32 | 450 (300-500) | 10.0x | 2.5 s | 1200 MiB |" in table
    # The failed run counts for nothing; the other two make the median.
    assert "| stamen-local-edge | 300 (250-350) | 6.7x |" in table
    assert "| stamen-ray | failed: exit code 1 |" in table
    assert "the median of 3 runs" in table


def test_a_single_run_is_tabled_without_a_range() -> None:
    runs = [run("flower-ray", 40.0), run("mlp-alone", 300.0)]
    table = fleet_throughput_report().to_markdown(runs)
    assert "| flower-ray | 40 | 1.0x |" in table
    assert "| mlp | 10,000 (1,000) | alone | 300 | 1.0x |" in table
    assert "median of" not in table
