"""The edge server of ``edge_load.py``: ``stamen server``'s own pieces, with one limit raised.

It builds the edge server and runs the ServerApp exactly as ``stamen server``
does (``stamen.cli.server_command``: the same round log, wait for devices,
federation run and run-ended notice), with one difference: the ``Join`` budget
per address. Every emulated device connects from 127.0.0.1, where a real fleet
joins from many addresses; the default budget (1,000 at once, then 1,200 a
minute per address) would make 10,000 devices queue for minutes. Every other
limit (per key, refused keys, challenges) stays at its default.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def main() -> None:
    from stamen.cli.output import console, setup_logging
    from stamen.cli.server_command import (
        EDGE_DEADLINE,
        EdgeRoundLog,
        run_edge_federation,
        wait_for_devices,
    )
    from stamen.config import load_config
    from stamen.server.checkpoint import CheckpointStore
    from stamen.server.edge import (
        EdgeRoundStats,
        EdgeServer,
        EdgeServerSettings,
        JoinLimits,
        RateLimit,
        RunEnd,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--per-round", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=EDGE_DEADLINE)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    setup_logging(False)
    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "partition": "iid",
            "num-devices": args.agents,
            "devices-per-round": args.per_round,
            "rounds": args.rounds,
            "federation.deadline": args.deadline,
        }
    )
    root = args.root
    settings = EdgeServerSettings(
        address="127.0.0.1:0",
        certs_dir=root / "certs",
        registry=root / "devices.json",
        join_limits=JoinLimits(per_address=RateLimit(burst=args.agents, per_minute=60_000)),
    )
    out = root / "results"
    edge_log = EdgeRoundLog(console, out)
    process = psutil.Process()

    def on_round(stats: EdgeRoundStats) -> None:
        edge_log.on_edge_round(stats)
        cpu = process.cpu_times()
        with (root / "server-rounds.jsonl").open("a") as trace:
            trace.write(
                json.dumps(
                    {
                        "round": stats.group_id,
                        "type": stats.message_type,
                        "seconds": stats.seconds,
                        "rss": process.memory_info().rss,
                        "cpu": cpu.user + cpu.system,
                        "at": time.time(),
                    }
                )
                + "\n"
            )

    collections = root / "server-gc.jsonl"
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        """Log each full collection (generation 2): its pause stops every thread."""
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        with collections.open("a") as log:
            log.write(json.dumps({"at": time.time(), "seconds": pause}) + "\n")

    gc.callbacks.append(on_gc)
    edge = EdgeServer(settings, on_round=on_round)
    io_thread = edge._thread.native_id  # the event loop's thread: the gRPC side of the server
    sending = edge.grid.send_and_receive

    def cpu_now() -> tuple[float, float]:
        times = process.cpu_times()
        io = sum(t.user_time + t.system_time for t in process.threads() if t.id == io_thread)
        return times.user + times.system, io

    def timed_round(messages: Any, *, timeout: float | None = None) -> Any:
        """The server's CPU inside each round (dispatch to close), all threads and the loop's."""
        batch = list(messages)
        before = cpu_now()
        replies = sending(batch, timeout=timeout)
        after = cpu_now()
        if batch and batch[0].metadata.message_type == "train":
            used = {"cpu": after[0] - before[0], "io": after[1] - before[1]}
            with (root / "server-round-cpu.jsonl").open("a") as trace:
                trace.write(json.dumps(used) + "\n")
        return replies

    edge.grid.send_and_receive = timed_round  # type: ignore[method-assign]
    port = edge.start()
    console.print(f"edge load server on port {port}", highlight=False)
    cpu = process.cpu_times()
    (root / "server-start.json").write_text(
        json.dumps({"rss": process.memory_info().rss, "cpu": cpu.user + cpu.system})
    )
    ended = RunEnd.failed()
    try:
        wait_for_devices(console, edge, args.agents, timeout=1800)
        checkpoints = CheckpointStore(root / "server-state")
        summary = run_edge_federation(console, edge, config, out, checkpoints, edge_log)
        ended = RunEnd.of_summary(summary)
    finally:
        edge.stop(grace=10.0, ended=ended)


if __name__ == "__main__":
    main()
