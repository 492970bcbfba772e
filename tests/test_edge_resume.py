"""Exact resume on the edge: a server killed after round k ends the run with the model
an uninterrupted run ends with, bit for bit.

Each case runs the same edge federation twice with real ``stamen server`` and
``stamen agent`` processes over TLS on loopback: once straight through, and once
with the server process SIGKILLed after round ``k`` and restarted on the same port
and state directory. Both runs use the same device keys, so the devices get the
same node ids, the same sampling and the same aggregation order.

The kill is placed so that the round the server loses had really been trained: one
device, which holds a larger data set and so trains for a second or so, is held with
SIGSTOP as soon as it starts round ``k + 1``, the two others train that round, then the
server dies. The restarted server resumes after
round ``k`` (model, masks, sampling RNG from its checkpoint) and sends round
``k + 1`` again. Why the result is still bit-exact:

- the server aggregates in sender order, not arrival order;
- a device's training and uplink rounding depend only on (seed, round, partition,
  model), never on time;
- the devices that trained the lost round recognise the same task in a new session
  and train it again from the error-feedback residual they had before it (without
  that, the edge preset's residual would count the lost round twice).

Slow: ``pytest -m slow tests/test_edge_resume.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_site import (
    Site,
    big_npz,
    deployment,
    digits_agent,
    digits_server,
    metrics,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]

FLEET = 3
ROUNDS = 5
KILL_AFTER = 2
"""The first round after which the server is killed (a later one if the race is lost)."""
HELD_ROWS = 30_000
"""Rows of the held device's data: enough for it to train a round for about a second."""
LOST_ROUND = "the server lost this round; training it again"


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    """Two deployments that share certificates, the registry and the device keys."""
    (tmp_path / "straight").mkdir()
    with deployment(tmp_path / "straight") as straight:
        for i in range(FLEET):
            straight.device(f"dev{i}")
        resumed = Site(tmp_path / "resumed")
        shutil.copytree(straight.certs, resumed.certs)
        shutil.copy(straight.registry, resumed.registry)
        for i in range(FLEET):
            keys = resumed.root / "agents" / f"dev{i}"
            keys.mkdir(parents=True)
            for name in ("device.key", "device.pub"):
                shutil.copy2(straight.root / "agents" / f"dev{i}" / name, keys / name)
        try:
            yield straight, resumed
        finally:
            resumed.stop_all()


def server_args(preset: str) -> list[str]:
    return [
        *digits_server(ROUNDS, FLEET, FLEET),
        "--preset",
        preset,
        "--deadline",
        "60",
        "--set",
        "training.local_epochs=4",
    ]


def start_agents(site: Site, port: int) -> list[Any]:
    """The fleet; the last device holds a larger data set, so that it can be held mid-round."""
    held = ["--dataset", f"npz:{big_npz(site.root.parent, HELD_ROWS)}"]
    return [
        site.agent(
            f"dev{i}",
            site.root / "agents" / f"dev{i}",
            port,
            *(held if i == FLEET - 1 else digits_agent(i, FLEET)),
            "--give-up-after",
            "120",
        )
        for i in range(FLEET)
    ]


def finished_rounds(site: Site) -> int:
    lines = site.root / "results" / "metrics.jsonl"
    return len(lines.read_text().splitlines()) if lines.exists() else 0


def straight_run(site: Site, preset: str) -> dict[str, Any]:
    """The reference: every round, no interruption."""
    server, port = site.server(*server_args(preset))
    start_agents(site, port)
    assert server.wait(timeout=200) == 0, site.text("server")[-3000:]
    return site.summary()


def killed_run(site: Site, preset: str) -> tuple[dict[str, Any], int]:
    """The same federation, its server killed in round ``k + 1``; returns the summary and k."""
    server, port = site.server(*server_args(preset))
    agents = start_agents(site, port)
    held = agents[-1]
    for k in range(KILL_AFTER, ROUNDS):
        # Stop the held device as soon as it has trained round k: the round it cannot
        # answer is then k + 1, however fast the machine runs the others.
        wait_for(lambda k=k: f"round {k}: done" in site.text(f"dev{FLEET - 1}"), 150, server)
        os.killpg(held.pid, signal.SIGSTOP)
        try:  # its reply to round k left before it stopped, as it almost always does
            wait_for(lambda k=k: finished_rounds(site) >= k, 15, server)
            break
        except pytest.fail.Exception:
            os.killpg(held.pid, signal.SIGCONT)  # stopped before replying: try the next round
    else:
        pytest.fail("the held device never replied before it was stopped")
    for i in range(FLEET - 1):  # the others train the round the server is about to lose
        wait_for(lambda i=i: f"round {k + 1}: done" in site.text(f"dev{i}"), 60, server)
    assert finished_rounds(site) == k, "round k + 1 finished without the held device"
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    os.killpg(held.pid, signal.SIGCONT)

    restarted, again = site.server(*server_args(preset), port=port, name="server-2")
    assert again == port
    assert restarted.wait(timeout=200) == 0, site.text("server-2")[-3000:]
    assert f"resuming from the checkpoint of round {k}" in site.text("server-2")
    for i in range(FLEET - 1):
        assert LOST_ROUND in site.text(f"dev{i}"), site.text(f"dev{i}")[-2000:]
    return site.summary(), k


@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", ["fp32", "edge"])
def test_a_server_killed_after_round_k_ends_with_the_uninterrupted_model(
    sites: tuple[Site, Site], preset: str
) -> None:
    """fp32 keeps no device state a lost round could change; the edge preset's devices
    keep an error-feedback residual, which the replay of the lost round puts back."""
    straight, resumed = sites
    started = time.monotonic()
    reference = straight_run(straight, preset)
    middle = time.monotonic()
    summary, k = killed_run(resumed, preset)
    print(
        f"{preset}: straight {middle - started:.1f} s, killed after round {k} and resumed "
        f"{time.monotonic() - middle:.1f} s; accuracy {summary['final_accuracy']:.4f}"
    )
    records = metrics(resumed)
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] == FLEET for r in records)
    assert [r["accepted"] for r in metrics(straight)] == [FLEET] * ROUNDS
    assert summary["final_model_sha256"] == reference["final_model_sha256"]
    assert summary["final_accuracy"] == reference["final_accuracy"]
