"""Run one ``stamen.launch.simulate`` in a fresh child process and measure it.

Shared by ``population.py`` and ``ray_cluster.py`` (``fleet_throughput.py`` takes its
:func:`tree_pss`). The child reports when each round
ended (:class:`RoundMarks`) and the summary; the parent samples the peak memory of the
child's whole process tree (PSS, so pages shared after a fork count once).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
MEMORY_SAMPLE_SECONDS = 0.5
"""Reading a process's PSS walks its page tables (about 10 ms per process)."""


class RoundMarks:
    """A round reporter that notes when the run started and each round ended.

    ``start_cpu_seconds``: the CPU time this process (the server) had used when round 1
    started, a figure a busy machine moves less than the wall time.
    """

    def __init__(self) -> None:
        self.marks: list[tuple[int, float, int]] = []
        self.start_cpu_seconds = 0.0

    def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
        self.marks.append((0, time.perf_counter(), 0))
        self.start_cpu_seconds = time.process_time()

    def on_round(self, record: Any) -> None:
        self.marks.append((record.round, time.perf_counter(), record.participants))

    def on_finish(self, summary: dict[str, Any]) -> None:
        pass


def timings(marks: list[tuple[int, float, int]], started: float) -> dict[str, Any]:
    """From a child's marks: start to round 1, round 1's length, steady updates per second.

    Steady: rounds 2 to R-1, between the marks of their ends (round R is left out: it is
    reported after the final central evaluation).
    """
    steady = [(b[2], b[1] - a[1]) for a, b in itertools.pairwise(marks[1:-1])]
    updates, seconds = sum(n for n, _ in steady), sum(s for _, s in steady)
    return {
        "first_round_start_seconds": marks[0][1] - started,
        "first_round_seconds": marks[1][1] - marks[0][1] if len(marks) > 1 else None,
        "updates_per_second": updates / seconds if seconds else None,
        "round_seconds": [b[1] - a[1] for a, b in itertools.pairwise(marks)],
    }


def tree_pss(pid: int) -> int:
    """Proportional set size of a process and all its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def run_child(
    command: list[str], result_file: Path | None, timeout: float, *, pass_launch: bool = True
) -> dict[str, Any]:
    """Run ``command`` (which writes ``result_file``), sampling its tree's peak PSS.

    With ``pass_launch``, the child is told when it was launched (``--launched``): a
    process's own start time, from /proc, is only as exact as the boot time's second.
    Returns the child's JSON with ``peak_memory_mib`` and ``wall_seconds``; or an ``error``.
    """
    launched = time.time()
    started = time.perf_counter()
    extra = ["--launched", repr(launched)] if pass_launch else []
    child = subprocess.Popen([*command, *extra], env={**os.environ, **QUIET})
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss(child.pid))
            done.wait(MEMORY_SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    done.set()
    sampler.join()
    if code != 0 or (result_file is not None and not result_file.exists()):
        return {"error": f"exit code {code}", "peak_memory_mib": peak[0] / 2**20}
    result: dict[str, Any] = json.loads(result_file.read_text()) if result_file else {}
    result.update(peak_memory_mib=peak[0] / 2**20, wall_seconds=time.perf_counter() - started)
    return result


def child_main(run: Any) -> None:
    """The child's side: ``run(overrides)`` returns its JSON; written to ``--result``.

    Arguments: ``--overrides JSON --result PATH --launched TIME``.
    """
    flags = iter(sys.argv[2:])
    arguments = dict(zip(flags, flags, strict=True))
    since_launch = time.time() - float(arguments["--launched"])
    started = time.perf_counter() - since_launch  # this process's start, on its own clock
    result = run(json.loads(arguments["--overrides"]), started)
    Path(arguments["--result"]).write_text(json.dumps(result, indent=1))


def child_command(script: str, overrides: dict[str, Any], result_file: Path) -> list[str]:
    """The command that runs ``script``'s child with ``overrides``."""
    return [
        sys.executable,
        script,
        "--child",
        "--overrides",
        json.dumps(overrides),
        "--result",
        str(result_file),
    ]
