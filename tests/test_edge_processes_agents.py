"""How agents come and go, as real processes: the run's end, a revocation, FedBuff on two speeds.

Real ``stamen server`` and ``stamen agent`` processes over TLS on 127.0.0.1, so
these are marked slow: ``pytest -m slow tests/test_edge_processes_agents.py``.
A vanished (killed) agent is in ``test_edge_processes.py``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from edge_site import (
    Site,
    a_round_with_a_slow_device,
    big_npz,
    digits_agent,
    digits_server,
    metrics,
    run,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]


@pytest.mark.timeout(300)
def test_agents_exit_0_saying_why_when_the_run_ends(site: Site) -> None:
    states = [site.device(f"dev{i}") for i in range(2)]
    server, port = site.server(*digits_server(2, 2, 2), "--deadline", "60")
    agents = [
        site.agent(f"dev{pid}", state, port, *digits_agent(pid, 2), "--give-up-after", "600")
        for pid, state in enumerate(states)
    ]
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]
    for pid, agent in enumerate(agents):
        # Told by the server, not given up: --give-up-after is ten minutes away.
        assert agent.wait(timeout=60) == 0, site.text(f"dev{pid}")[-2000:]
        log = site.text(f"dev{pid}")
        assert "the run has ended on the server (finished): finished 2 rounds" in log
        assert "reconnecting" not in log and "Traceback" not in log


@pytest.mark.timeout(300)
def test_a_device_revoked_mid_round_is_cut_off_and_its_round_closes_at_once(
    site: Site, tmp_path: Path
) -> None:
    deadline = 120
    server, victim = a_round_with_a_slow_device(site, tmp_path, deadline)  # dev2 trains
    done = run("devices", "revoke", "dev2", "--registry", str(site.registry), cwd=site.root)
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    wait_for(lambda: "round 1: 2/3 answered" in site.text("server"), 60, server)
    closed_after = time.monotonic() - revoked_at
    assert victim.wait(timeout=180) == 3  # refused for good (AgentExit.REFUSED), and told why
    assert "was revoked on this server" in site.text("dev2")
    assert "unknown session" not in site.text("dev2")
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]

    assert closed_after < 10, closed_after  # the registry is re-read within a second or two
    # The printed line, edge-rounds.jsonl and metrics.jsonl tell the same story.
    assert "round 1: 2/3 answered · revoked 1" in site.text("server")
    first = site.summary()["edge"]["rounds"][0]
    assert (first["revoked"], first["dropouts"], first["timed_out"]) == (1, 1, 0)
    assert first["participants"] == 2 and first["seconds"] < deadline / 2
    records = metrics(site)
    assert (records[0]["participants"], records[0]["sampled"]) == (2, 3)
    assert (records[0]["dropouts"], records[0]["stragglers"]) == (1, 0)
    assert records[1]["sampled"] == 2 and records[1]["accepted"] == 2


@pytest.mark.timeout(400)
def test_fedbuff_on_agents_of_two_speeds_does_not_wait_for_the_slow_ones(
    site: Site, tmp_path: Path
) -> None:
    states = [site.device(f"dev{i}") for i in range(4)]
    aggregations = 4
    server, port = site.server(
        *digits_server(aggregations, 4, 4),
        "--strategy",
        "fedbuff",
        "--set",
        "strategy.buffer_size=2",
        "--deadline",
        "300",
    )
    fast = [site.agent(f"fast{p}", states[p], port, *digits_agent(p, 2)) for p in range(2)]
    slow_data = big_npz(tmp_path)
    slow = [
        site.agent(f"slow{p}", states[2 + p], port, "--dataset", f"npz:{slow_data}", "-v")
        for p in range(2)
    ]
    assert server.wait(timeout=300) == 0, site.text("server")[-3000:]
    finished = {name: site.text(name).count("done in") for name in ("slow0", "slow1")}

    # Every aggregation took two updates, all from the fast agents: no slow agent had
    # finished a task when the run ended.
    records = metrics(site)
    assert [r["accepted"] for r in records] == [2] * aggregations
    assert finished == {"slow0": 0, "slow1": 0}, finished
    handled = [len(re.findall(r"done in", site.text(f"fast{p}"))) for p in range(2)]
    assert sum(handled) >= 2 * aggregations, handled
    summary = site.summary()
    assert summary["strategy"] == "fedbuff" and summary["rounds"] == aggregations
    # Each agent, fast or slow, then learns that the run ended and exits 0.
    agents = {"fast0": fast[0], "fast1": fast[1], "slow0": slow[0], "slow1": slow[1]}
    for name, agent in agents.items():
        assert agent.wait(timeout=240) == 0, site.text(name)[-2000:]
        assert "the run has ended on the server (finished)" in site.text(name)
