"""A federation's lifecycle as real processes: ``stamen server`` and ``stamen agent`` on loopback.

Every test here starts real processes talking TLS over 127.0.0.1 with device
authentication on, so they are marked slow: ``pytest -m slow tests/test_edge_processes.py``.
Who and what the server refuses is in ``test_edge_processes_security.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from edge_site import (
    Site,
    a_round_with_a_slow_device,
    digits_agent,
    digits_server,
    metrics,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]


FLEET = 10
TRAINING = [
    "--dataset",
    "mnist-small",
    "--model",
    "mlp",
    "--set",
    "data.partition='iid'",
    "--set",
    "training.lr=0.1",
    "--set",
    "training.local_epochs=1",
]
"""A small MNIST federation that learns in a few rounds on two cores."""


def agent_data(pid: int, fleet: int = FLEET) -> list[str]:
    return [
        "--dataset",
        "mnist-small",
        "--partition",
        "iid",
        "--partition-id",
        str(pid),
        "--num-partitions",
        str(fleet),
    ]


def server_rounds(rounds: int, per_round: int, fleet: int = FLEET) -> list[str]:
    return [
        *TRAINING,
        "--rounds",
        str(rounds),
        "--num-devices",
        str(fleet),
        "--devices-per-round",
        str(per_round),
    ]


@pytest.mark.timeout(600)
def test_ten_agents_train_five_rounds_over_tls_like_the_simulation(site: Site) -> None:
    from stamen.config import load_config
    from stamen.launch import simulate

    states = [site.device(f"dev{i}") for i in range(FLEET)]
    server, port = site.server(*server_rounds(5, FLEET), "--deadline", "120")
    for pid, state in enumerate(states):
        site.agent(f"dev{pid}", state, port, *agent_data(pid))
    assert server.wait(timeout=480) == 0, site.text("server")[-3000:]
    edge = site.summary()
    config = load_config(
        overrides={
            "data.dataset": "mnist-small",
            "training.model": "mlp",
            "data.partition": "iid",
            "training.lr": 0.1,
            "training.local_epochs": 1,
            "federation.rounds": 5,
            "federation.num_devices": FLEET,
            "federation.devices_per_round": FLEET,
        }
    )
    simulated = simulate(config)
    print(
        f"edge accuracy {edge['final_accuracy']:.4f} vs simulation "
        f"{simulated['final_accuracy']:.4f}; edge round seconds {edge['edge']['round_seconds']}"
    )
    assert edge["rounds"] == 5
    assert edge["edge"]["timed_out"] == 0 and edge["edge"]["refused_uploads"] == 0
    assert all(r["accepted"] == FLEET for r in metrics(site))
    assert abs(edge["final_accuracy"] - simulated["final_accuracy"]) <= 0.02
    assert edge["final_accuracy"] > 0.7
    for pid in range(FLEET):
        assert (states[pid] / "state.npz").exists(), f"agent {pid} persisted no state"


@pytest.mark.timeout(300)
def test_an_agent_killed_mid_round_frees_its_slot_within_the_heartbeat_timeout(
    site: Site, tmp_path: Path
) -> None:
    deadline = 120
    server, victim = a_round_with_a_slow_device(site, tmp_path, deadline)
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(timeout=10)
    wait_for(lambda: "round 1: 2/3 answered" in site.text("server"), 60, server)
    freed_after = time.monotonic() - killed
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]

    # Its stream broke at once; with no heartbeat for two periods (5 s each) it is gone,
    # its task is a dropout, and the round closes long before its deadline.
    assert freed_after < 2 * 5 + 10, freed_after
    first = site.summary()["edge"]["rounds"][0]
    assert (first["vanished"], first["dropouts"], first["timed_out"]) == (1, 1, 0)
    assert first["participants"] == 2 and first["seconds"] < deadline / 2
    records = metrics(site)
    assert records[0]["accepted"] == 2 and records[0]["sampled"] == 3
    assert records[0]["dropouts"] == 1 and records[0]["stragglers"] == 0
    assert records[1]["sampled"] == 2 and records[1]["accepted"] == 2  # the dead one is gone
    assert "node" in site.text("server") and "is gone" in site.text("server")
    assert_tables_agree(site)


def table_rows(log: str, title: str) -> list[list[str]]:
    """The rows of a table the server printed, each as its cells."""
    rows, inside = [], False
    for line in log.splitlines():
        if line.strip() == title:
            inside = True
        elif inside and re.match(r"\s*\d+\s", line):
            rows.append(line.split())
        elif inside and rows and not line.strip():
            break
    return rows


def assert_tables_agree(site: Site) -> None:
    """The printed tables, edge-rounds.jsonl and summary.json tell the same counts."""
    lines = [json.loads(x) for x in (site.root / "results" / "edge-rounds.jsonl").open()]
    assert lines == site.summary()["edge"]["rounds"]
    log = site.text("server")
    keys = ["sent", "participants", "timed_out", "dropouts", "cancelled", "late_dropped"]
    keys += ["surplus_dropped", "refused_uploads"]
    edge_rows = table_rows(log, "Edge rounds")
    assert [[int(x) for x in row[1:]] for row in edge_rows] == [
        [line[key] for key in keys] for line in lines
    ]
    # "answered" (participants/sampled) is the first n/n cell; "late/lost" comes after it.
    answered = [
        next(c for c in row if re.fullmatch(r"\d+/\d+", c)) for row in table_rows(log, "Rounds")
    ]
    assert answered == [f"{line['participants']}/{line['sent']}" for line in lines]


@pytest.mark.timeout(400)
def test_a_restarted_server_resumes_after_the_last_finished_round(site: Site) -> None:
    states = [site.device(f"dev{i}") for i in range(3)]
    args = [*digits_server(6, 3, 3), "--deadline", "60", "--set", "training.local_epochs=3"]
    server, port = site.server(*args)
    agents = [
        site.agent(f"dev{pid}", state, port, *digits_agent(pid, 3), "--give-up-after", "120")
        for pid, state in enumerate(states)
    ]
    lines = site.root / "results" / "metrics.jsonl"
    wait_for(lambda: lines.exists() and len(lines.read_text().splitlines()) >= 2, 200, server)
    finished = len(lines.read_text().splitlines())
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    assert finished < 6, "the run ended before the server could be killed"

    restarted, again = site.server(*args, port=port, name="server-2")
    assert again == port
    assert restarted.wait(timeout=300) == 0, site.text("server-2")[-3000:]
    log = site.text("server-2")
    resumed = int(re.search(r"resuming from the checkpoint of round (\d+)", log).group(1))
    assert resumed >= finished  # no finished round was lost
    records = metrics(site)
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert site.summary()["rounds"] == 6
    assert all(r["accepted"] == 3 for r in records[resumed:])  # the agents came back
    assert all(agent.poll() is None or agent.returncode == 0 for agent in agents)
    assert all("reconnecting" in site.text(f"dev{pid}") for pid in range(3))
