"""The README's library example runs as written."""

import runpy
from pathlib import Path

import pytest

from stamen.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_app.py"


def test_custom_app_example_runs_five_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(EXAMPLE), run_name="__main__")
    stats = namespace["strategy"].stats
    assert sorted(stats) == [1, 2, 3, 4, 5]
    assert all(round_stats.accepted == 5 for round_stats in stats.values())
    assert stats[5].sparsity == pytest.approx(0.5, abs=0.01)
    assert "{1: 5" in capsys.readouterr().out


def test_example_config_file_resolves_to_the_edge_preset() -> None:
    config = load_config(EXAMPLE.parent / "mnist-edge.toml")
    assert config == load_config(overrides={"preset": "edge"})
