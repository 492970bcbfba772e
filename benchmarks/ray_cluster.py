"""Benchmark: Stamen's simulation grid on a two-node Ray cluster, against one node and local.

Starts its own Ray cluster on loopback: ``ray start --block`` processes, a head and a
worker node, each ``--num-cpus 1``, on 127.0.0.1, each with its own temp folder and
ports, and stops exactly those processes and their descendants by PID afterwards. In one
invocation, each run in a fresh process:

- ``local``: the local backend (forked workers), the reference for the results;
- ``ray-1-node``: ``--backend ray --ray-address`` on the head alone (one actor);
- ``ray-2-nodes``: the same with the worker node joined (two actors, one per node);
- ``ray-1-of-2-nodes``: one actor (``--workers 1``) while both nodes are up, alternated
  with ``ray-2-nodes`` (``--repeat`` times), so that a change in the machine's load
  does not favour either.

Workload W1 at a modest scale (LeNet on MNIST, 60 rows a device, one epoch of batches of 20,
fp32) with the ideal fleet. Reports steady updates per second (rounds 2 to R-1), the ratio
of two nodes to one (medians), the cores the actors got (their CPU time over the rounds'
wall time, read from /proc), whether each Ray run ended on the local run's model (SHA-256
of the final weights; the stated tolerance otherwise is 0.5 points of accuracy), and that
no process of the cluster outlived it. Writes ``ray_cluster.json`` and ``ray_cluster.md``.

    python benchmarks/ray_cluster.py --out benchmarks/results
    python benchmarks/ray_cluster.py --quick --out /tmp/ray-quick   # the slow test's run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil
from federation_runs import QUIET, RoundMarks, child_command, child_main, run_child, timings

os.environ.update(QUIET)

RAY = Path(sys.executable).parent / "ray"
START_SECONDS = 180.0
"""How long the cluster may take to come up (Ray starts several processes per node)."""
ACCURACY_TOLERANCE = 0.005
"""Ray runs must end within 0.5 points of the local run's accuracy (they are expected to
end on the very same model: the same devices in the same training groups)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LoopbackCluster:
    """Ray nodes on 127.0.0.1, each ``ray start --block`` with one CPU, stopped by PID."""

    def __init__(self) -> None:
        # Ray's socket paths must stay short, so the temp folders are not deep.
        self.root = Path(tempfile.mkdtemp(prefix="stray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []

    def add_node(self) -> None:
        """Start the head (first call) or a worker node joining it."""
        index = len(self.nodes)
        temp = self.root / f"n{index}"
        temp.mkdir()
        command = [
            str(RAY),
            "start",
            "--block",
            "--num-cpus=1",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}",
            f"--object-store-memory={256 * 2**20}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        if index == 0:
            command += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            command += [f"--address={self.address}"]
        log = (self.root / f"n{index}.log").open("wb")
        self.nodes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET}
            )
        )

    def processes(self) -> list[int]:
        """The nodes' ``ray start`` processes, their descendants, and anything naming our
        temp folder (a Ray process that has lost its parent)."""
        table = process_table()
        found = [node.pid for node in self.nodes] + [
            pid for pid, (_, argv) in table.items() if any(str(self.root) in arg for arg in argv)
        ]
        frontier = list(found)
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
            children = [pid for pid in children if pid not in found]
            found.extend(children)
            frontier.extend(children)
        return found

    def stop(self) -> int:
        """Stop every process of the cluster by PID; returns how many outlived the stop."""
        pids = self.processes()
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
                time.sleep(0.2)
            pids = [pid for pid in pids if is_alive(pid)]
            if not pids:
                break
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
        left = len([pid for pid in self.processes() if is_alive(pid)])
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    def log_tail(self) -> str:
        """The end of each node's ``ray start`` output."""
        return "\n".join(
            path.read_text(errors="replace")[-2000:] for path in sorted(self.root.glob("n*.log"))
        )


def process_table() -> dict[int, tuple[int, list[str]]]:
    """``pid -> (parent pid, argv)`` for every process this user can see."""
    table: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (parent, [arg.decode(errors="replace") for arg in argv if arg])
    return table


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def overrides(devices: int, per_round: int, rounds: int) -> dict[str, Any]:
    """W1 at a modest scale, on the ideal fleet (nobody offline: all work is training)."""
    return {
        "preset": "fp32",
        "dataset": "mnist",
        "model": "lenet",
        "partition": "iid",
        "data.samples_per_device": 60,
        "num-devices": devices,
        "devices-per-round": per_round,
        "rounds": rounds,
        "local-epochs": 1,
        "batch-size": 20,
        "lr": 0.05,
        "fleet.preset": "ideal",
        "federation.eval_every": rounds,
    }


def run_federation(settings: dict[str, Any], started: float) -> dict[str, Any]:
    """In the child: wait for the cluster's nodes (``expect-nodes``), then run."""
    import logging

    from stamen.config import load_config
    from stamen.launch import simulate

    logging.disable(logging.WARNING)
    expected = settings.pop("expect-nodes", 0)
    if expected:
        import ray

        ray.init(
            address=settings["federation.ray_address"],
            include_dashboard=False,
            log_to_driver=False,
        )
        deadline = time.monotonic() + START_SECONDS
        while sum(node["Alive"] for node in ray.nodes()) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"the cluster did not reach {expected} nodes")
            time.sleep(0.5)
    marks = RoundMarks()
    summary = simulate(load_config(overrides=settings), marks)
    return {
        **timings(marks.marks, started),
        "first_round_start_cpu_seconds": marks.start_cpu_seconds,
        "final_accuracy": summary["final_accuracy"],
        "final_model_sha256": summary["final_model_sha256"],
        "participants": summary["participants"],
        "workers": summary.get("workers"),
        "worker_nodes": summary.get("worker_nodes"),
    }


def measure(
    name: str,
    settings: dict[str, Any],
    out: Path,
    timeout: float,
    cluster: LoopbackCluster | None = None,
) -> dict[str, Any]:
    """Run one path in a fresh process; on a cluster, also the CPU time its actors used."""
    result_file = out / f"ray-cluster-{name}.json"
    actor_cpu: dict[int, float] = {}
    done = threading.Event()

    def sample_actors() -> None:
        while cluster is not None and not done.wait(1.0):
            for pid in cluster.processes():
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    if "DeviceActor" in " ".join(process.cmdline()):
                        times = process.cpu_times()
                        actor_cpu[pid] = max(actor_cpu.get(pid, 0.0), times.user + times.system)

    sampler = threading.Thread(target=sample_actors, daemon=True)
    sampler.start()
    row = run_child(child_command(__file__, settings, result_file), result_file, timeout)
    done.set()
    sampler.join()
    result_file.unlink(missing_ok=True)
    row = {"path": name, **row}
    if cluster is not None and "error" not in row:
        busy = sum(row["round_seconds"])
        # The actors' CPU over the rounds' wall time: how many cores they got.
        row.update(
            actor_cpu_seconds=sum(actor_cpu.values()), actor_cores=sum(actor_cpu.values()) / busy
        )
    print(json.dumps(row), flush=True)
    return row


def to_markdown(result: dict[str, Any]) -> str:
    """The table for the docs."""
    lines = [
        "| path | actors (nodes) | updates/s | vs one node | cores the actors got "
        "| final accuracy | same model as local |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    one = next((r for r in result["rows"] if r["path"] == "ray-1-node" and "error" not in r), None)
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['path']} | {row['error']} | | | | |")
            continue
        ratio = (
            f"{row['updates_per_second'] / one['updates_per_second']:.2f}x"
            if one and row["path"].startswith("ray") and one["updates_per_second"]
            else ""
        )
        actors = f"{row['workers']} ({row['worker_nodes']})" if row.get("workers") else ""
        cores = f"{row['actor_cores']:.2f}" if "actor_cores" in row else ""
        lines.append(
            f"| {row['path']} | {actors} | {row['updates_per_second']:.1f} | {ratio} | {cores} "
            f"| {row['final_accuracy']:.4f} | {row.get('same_model_as_local', '')} |"
        )
    medians = result["median_updates_per_second"]
    if result["two_nodes_over_one"]:
        lines += [
            "",
            f"Median updates/s: one one-CPU node {medians['one']:.1f}, two one-CPU nodes "
            f"{medians['two']:.1f}: **{result['two_nodes_over_one']:.2f}x**.",
        ]
    lines += [
        "",
        f"{result['devices']:,} devices, {result['per_round']} a round, {result['rounds']} "
        f"rounds; the local run has {result['local_workers']} forked workers. Processes of the "
        f"cluster left after it was stopped: {result['cluster_processes_left']}. "
        f"Command: `{result['command']}`. {result['machine']}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="a small run, for the slow test")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--note", default="", help="what the machine was doing")
    parser.add_argument(
        "--repeat", type=int, default=0, help="two-node runs, alternated with one-actor runs"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.repeat = args.repeat or (1 if args.quick else 3)
    devices, per_round, rounds = (200, 32, 3) if args.quick else (1_000, 200, 6)
    settings = overrides(devices, per_round, rounds)
    local_workers = 2
    rows = [
        measure("local", {**settings, "federation.workers": local_workers}, args.out, args.timeout)
    ]
    cluster = LoopbackCluster()
    try:
        cluster.add_node()
        on_cluster = {**settings, "backend": "ray", "federation.ray_address": cluster.address}
        one = {**on_cluster, "expect-nodes": 1}
        rows.append(measure("ray-1-node", one, args.out, args.timeout, cluster))
        cluster.add_node()
        two = {**on_cluster, "expect-nodes": 2}
        # Alternated, so that a change in the machine's load does not favour one of them.
        for _ in range(args.repeat):
            rows.append(measure("ray-2-nodes", two, args.out, args.timeout, cluster))
            if args.repeat > 1:
                one_of_two = {**two, "federation.workers": 1}
                rows.append(
                    measure("ray-1-of-2-nodes", one_of_two, args.out, args.timeout, cluster)
                )
    finally:
        log = cluster.log_tail()
        left = cluster.stop()
    local = rows[0]
    for row in rows[1:]:
        if "error" not in row and "error" not in local:
            row["same_model_as_local"] = row["final_model_sha256"] == local["final_model_sha256"]
            row["accuracy_within_tolerance"] = (
                abs(row["final_accuracy"] - local["final_accuracy"]) <= ACCURACY_TOLERANCE
            )
    rates = {
        shape: [
            row["updates_per_second"]
            for row in rows
            if row["path"] in paths and "error" not in row and row["updates_per_second"]
        ]
        for shape, paths in (("one", ("ray-1-node", "ray-1-of-2-nodes")), ("two", ("ray-2-nodes",)))
    }
    result = {
        "command": "python benchmarks/ray_cluster.py" + (" --quick" if args.quick else ""),
        "median_updates_per_second": {
            shape: median(r) if r else None for shape, r in rates.items()
        },
        "two_nodes_over_one": median(rates["two"]) / median(rates["one"])
        if rates["one"] and rates["two"]
        else None,
        "devices": devices,
        "per_round": per_round,
        "rounds": rounds,
        "local_workers": local_workers,
        "accuracy_tolerance": ACCURACY_TOLERANCE,
        "machine": args.note,
        "rows": rows,
        "cluster_processes_left": left,
    }
    if any("error" in row for row in rows):
        result["cluster_log_tail"] = log
    (args.out / "ray_cluster.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "ray_cluster.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(run_federation)
    else:
        main()
