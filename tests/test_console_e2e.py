"""``stamen console`` in a real terminal (tmux), attached to ``stamen simulate --monitor-port``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

ROUNDS = 500
ROUND = re.compile(rf"round (\d+)/{ROUNDS}")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_console_in_tmux_follows_and_stops_a_simulation(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    log = (tmp_path / "simulate.log").open("w")
    simulation = subprocess.Popen(
        [
            str(bin_dir / "stamen"),
            "simulate",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--num-devices",
            "6",
            "--devices-per-round",
            "3",
            "--rounds",
            str(ROUNDS),
            "--monitor-port",
            "0",
            "--out",
            str(out),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    socket = f"stamen-e2e-{os.getpid()}"
    tmux = ["tmux", "-L", socket]
    try:
        wait_for(lambda: (out / "monitor.json").exists(), 120, "the monitor to start")
        monitor = json.loads((out / "monitor.json").read_text())
        command = shlex.join(
            [
                str(bin_dir / "stamen"),
                "console",
                "--server",
                monitor["address"],
                "--token-file",
                monitor["token_file"],
            ]
        )
        subprocess.run(
            [
                *tmux,
                "new-session",
                "-d",
                "-s",
                "console",
                "-x",
                "80",
                "-y",
                "24",
                f"{command}; echo console exited $?; sleep 60",
            ],
            check=True,
            env={**env, "TERM": "xterm-256color"},
        )

        def screen() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "console"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        def round_shown() -> int:
            found = ROUND.search(screen())
            return int(found.group(1)) if found else 0

        try:
            wait_for(lambda: round_shown() >= 1, 120, "the console to show a round")
            first = round_shown()
            wait_for(lambda: round_shown() > first, 120, "the round counter to advance")
        except AssertionError:
            # What both sides showed, for the failure report (pytest prints captured output).
            print("console screen:", screen(), sep="\n")
            log.flush()
            print("simulate log:", (tmp_path / "simulate.log").read_text()[-3000:], sep="\n")
            metrics = out / "metrics.jsonl"
            finished = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            print("rounds finished:", finished)
            raise
        assert "Stamen" in screen() and "operator" in screen()

        subprocess.run([*tmux, "send-keys", "-t", "console", "s"], check=True)
        wait_for(lambda: "Stop the run" in screen(), 60, "the stop confirmation")
        subprocess.run([*tmux, "send-keys", "-t", "console", "y"], check=True)
        simulation.wait(timeout=120)
        assert simulation.returncode == 0
        wait_for(lambda: "stopped" in screen(), 60, "the console to show the stop")
        # The simulation has exited and its monitor with it: the console says so, once,
        # and does not try to reconnect.
        wait_for(lambda: "monitor closed" in screen(), 60, "the console to see it")
        time.sleep(3)
        assert "reconnect" not in screen() and "connection lost" not in screen()
        assert "final accuracy" in screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)
        if simulation.poll() is None:
            simulation.kill()
            simulation.wait(timeout=30)
        log.close()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] is True and 2 <= summary["rounds"] < ROUNDS
    assert "stopped by an operator" in (tmp_path / "simulate.log").read_text()
