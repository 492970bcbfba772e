"""The corpus of hostile replies (``hostile_replies``) through the real strategy, in federations.

One device of eight runs a hostile ClientApp; the others run the real one. For
every case the server must refuse the reply with a reason a user can read (or,
for well-formed but outsized updates, bound it), the round must go on with the
seven honest devices, the model must stay finite, and the process's peak memory
must stay within a bound of the honest run's.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from hostile_replies import CASES, Case, hostile_app

from stamen.client import client_app
from stamen.config import StamenConfig, load_config
from stamen.launch import fleet_of
from stamen.server import CollectingReporter, server_app
from stamen.simulations import LocalGrid

HOSTILE = 1
"""The hostile device's partition; its node id is ``HOSTILE + 1``."""
DEVICES = 8
MEMORY_BOUND = 64 * 2**20
"""Most the peak RSS may grow beyond the honest run's while a hostile federation runs."""


def federation(case: Case) -> StamenConfig:
    return load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "preset": "edge",
            "uplink.topk_ratio": 0.1,
            "num-devices": DEVICES,
            "devices-per-round": DEVICES,
            "rounds": max(case.rounds),
            "partition": "iid",
            "lr": 0.1,
            "local-epochs": 1,
            "fleet.preset": "ideal",
            **case.overrides,
        }
    )


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise LookupError(field_name)


def run(config: StamenConfig, apps: dict[int, ClientApp]) -> tuple[CollectingReporter, int]:
    """Run the federation; the records and how far the peak RSS rose above the start, in bytes."""
    grid = LocalGrid(client_app(fleet_of(config)), DEVICES, apps_by_partition=apps)
    reporter = CollectingReporter()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    start = _status_kib("VmRSS")
    server_app(config, reporter)(grid, context)
    return reporter, (_status_kib("VmHWM") - start) * 1024


@pytest.fixture(scope="module")
def honest() -> tuple[int, float]:
    """The honest federation's peak RSS growth and final accuracy."""
    config = federation(Case(send=lambda m, c, h: h, reason=None))
    reporter, peak = run(config, {})
    assert all(record.rejected == 0 for record in reporter.records)
    return peak, reporter.records[-1].accuracy


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_reply_is_refused_and_the_round_goes_on(
    name: str, honest: tuple[int, float]
) -> None:
    honest_peak, honest_accuracy = honest
    case = CASES[name]
    config = federation(case)
    reporter, peak = run(config, {HOSTILE: hostile_app(config, case.send)})
    hostile_node = HOSTILE + 1
    for record in reporter.records:
        refused = [r for r in record.rejections if r["node_id"] in (hostile_node, hostile_node + 1)]
        if case.reason is not None and record.round in case.rounds:
            assert len(refused) == 1, record.rejections
            assert case.reason.lower() in refused[0]["reason"].lower(), refused[0]["reason"]
            assert "\n" not in refused[0]["reason"]
            assert record.accepted == DEVICES - 1
        else:
            assert refused == [], refused
        if case.bounded is not None:
            assert record.extra.get(case.bounded, 0) >= 1, record.extra
        assert math.isfinite(record.loss)
    assert reporter.summary is not None
    assert "refused_models" not in reporter.summary
    assert reporter.records[-1].accuracy > honest_accuracy - 0.1
    assert peak - honest_peak < MEMORY_BOUND, f"peak RSS {peak - honest_peak} bytes above honest"
