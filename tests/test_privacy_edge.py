"""Secure aggregation on the edge grid: ``stamen server --preset private-edge`` and real agents.

Real processes over TLS on 127.0.0.1 with device authentication, so marked slow:
``pytest -m slow tests/test_privacy_edge.py``. The agents run the unchanged ClientApp;
the edge grid forwards secure aggregation's four message types as it forwards any other.
"""

from __future__ import annotations

import sys

import pytest
from edge_site import Site, metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]

FLEET = 6


@pytest.mark.timeout(600)
def test_real_agents_complete_secure_rounds_with_distributed_dp(site: Site) -> None:
    states = [site.device(f"dev{i}") for i in range(FLEET)]
    server, port = site.server(
        "--preset", "private-edge", "--dataset", "mnist-small", "--model", "mlp",
        "--set", "data.partition='iid'", "--set", "training.lr=0.1",
        "--set", "training.local_epochs=1", "--rounds", "2", "--num-devices", str(FLEET),
        "--devices-per-round", str(FLEET), "--deadline", "120",
        "--dp", "distributed", "--target-epsilon", "8",
    )  # fmt: skip
    for pid, state in enumerate(states):
        site.agent(
            f"dev{pid}", state, port, "--dataset", "mnist-small", "--partition", "iid",
            "--partition-id", str(pid), "--num-partitions", str(FLEET),
        )  # fmt: skip
    assert server.wait(timeout=480) == 0, site.text("server")[-3000:]
    summary = site.summary()
    assert summary["rounds"] == 2
    rounds = metrics(site)
    assert [r["secagg_uploaded"] for r in rounds] == [FLEET, FLEET]
    assert all(r["secagg_failed"] == 0 and r["accepted"] == FLEET for r in rounds)
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"] <= 8.0
    assert summary["dp"]["epsilon"] == rounds[1]["epsilon"]
