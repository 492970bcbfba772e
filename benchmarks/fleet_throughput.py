"""Benchmark: device-updates per second on workload W1, Stamen's grid against Flower's Ray engine.

Each path runs in its own fresh process, one after another, on the same
machine and in the same invocation, so the figures compare as ratios:

- ``flower-ray``: stock Flower, plain PyTorch ClientApp, FedAvg, Simulation Engine (Ray);
- ``stamen-ray``: Stamen's apps (``--preset fp32``) on Flower's Simulation Engine;
- ``stamen-local-fp32`` and ``stamen-local-edge``: Stamen's simulation grid.

Then W1 with its LeNet swapped for MobileNet and for the MLP (``--preset fp32``, 10,000
devices, 1,000 a round), each trained four ways on the simulation grid:

- ``together``: as configured (grouped layers, ``stamen.models.GroupedStack``);
- ``vmap``: the generic path for models without grouped layers (``VmapStack``);
- ``fallback``: a model that stacks in no form: probed, then trained one at a time;
- ``alone``: ``--device-batch 1``, one device at a time through the plain ClientApp.

For each it reports steady-state device-updates per second (rounds 2 to R-1:
no start-up, no final central evaluation), the time from the start of the run
to the start of round 1, and the peak memory summed over the whole process
tree (PSS, so pages shared after a fork count once). Every path runs
``--repeats`` times (3), the repeats interleaved (every path once, then every
path again), so that the machine's drift over the invocation reaches every path
alike; the tables give each path's median updates per second with its range,
ratios of medians, the median first round and the highest peak. Writes
``fleet_throughput.json`` (every run) and ``fleet_throughput.md`` into ``--out``
(``benchmarks/results``).

    python benchmarks/fleet_throughput.py

``--before DIR`` also runs the Stamen local paths on an earlier build installed
in ``DIR`` (``pip install --no-deps --target DIR CHECKOUT``), right after this
build's run of the same path, so a change is measured against what it replaced
in one invocation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from builds import QUIET, build_env, build_label, check_build
from federation_runs import tree_pss
from fleet_throughput_report import MODEL_PATHS, PATHS, W1_PATHS, to_markdown

os.environ.update(QUIET)

MEMORY_SAMPLE_SECONDS = 1.0
"""Reading a process's PSS walks its page tables, about 10 ms of CPU per process: sampled
more often, the harness would take a noticeable share of the two cores it measures."""

# -- one path, in a child process ----------------------------------------------------


def run_path(
    path: str, devices: int, per_round: int, rounds: int, launched: float
) -> dict[str, Any]:
    """Run one path; returns when each round started and how many updates it had.

    ``launched`` is the wall-clock time at which the harness started this process (a
    process's own start time, from /proc, is only as exact as the boot time's whole second).
    """
    import logging

    logging.disable(logging.WARNING)
    marks: list[tuple[int, float, int]] = []
    started = time.perf_counter()
    since_launch = time.time() - launched
    if path == "flower-ray":
        run_flower_baseline(devices, per_round, rounds, marks)
    else:
        run_stamen(path, devices, per_round, rounds, marks)
    return {"started": started, "since_launch": since_launch, "marks": marks}


def run_flower_baseline(
    devices: int, per_round: int, rounds: int, marks: list[tuple[int, float, int]]
) -> None:
    """Stock Flower on Ray, two actors of one CPU each."""
    sys.path.insert(0, str(Path(__file__).parent))
    from flwr.simulation import run_simulation
    from w1_flower_baseline import make_client_app, make_server_app

    def on_round(server_round: int) -> None:
        marks.append((server_round, time.perf_counter(), per_round if server_round else 0))

    run_simulation(
        server_app=make_server_app(devices, per_round, rounds, on_round),
        client_app=make_client_app(),
        num_supernodes=devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": os.cpu_count() or 1,
                "include_dashboard": False,
                "log_to_driver": False,
            },
        },
    )


def run_stamen(
    path: str, devices: int, per_round: int, rounds: int, marks: list[tuple[int, float, int]]
) -> None:
    """Stamen's apps on the path's backend and preset."""
    check_build()
    from stamen.config import load_config

    try:
        from stamen.launch import simulate
    except ImportError:  # a build from before stamen.launch (--before)
        from stamen.simulations import simulate  # type: ignore[no-redef]

    class Marks:
        def on_start(self, total_rounds: int, initial_accuracy: float) -> None:
            marks.append((0, time.perf_counter(), 0))

        def on_round(self, record: Any) -> None:
            marks.append((record.round, time.perf_counter(), record.participants))

        def on_finish(self, summary: dict[str, Any]) -> None:
            pass

    model, _, form = path.partition("-") if path in MODEL_PATHS else ("lenet", "", "")
    if form in ("vmap", "fallback"):
        force_stacking(form)
    config = load_config(
        overrides={
            "preset": "edge" if path.endswith("edge") else "fp32",
            "backend": "flower-ray" if path == "stamen-ray" else "local",
            "dataset": "mnist",
            "model": model,
            "federation.device_batch": 1 if form == "alone" else 0,
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
    )
    simulate(config, Marks())


def force_stacking(form: str) -> None:
    """Train with the generic vmap form (``vmap``), or with none (``fallback``), whatever the
    model: the paths a model without grouped layers, or one that no form can run, takes."""
    from stamen.client import batched
    from stamen.models import VmapStack

    def stacking_for(model: Any, sample_shape: tuple[int, ...]) -> Any:
        if form == "fallback":
            return None
        return batched.StackPlan(VmapStack.replicate, VmapStack.batch_coupled)

    batched.stacking_for = stacking_for


# -- the harness -----------------------------------------------------------------------


def measure(
    path: str, devices: int, per_round: int, rounds: int, scratch: Path, before: Path | None = None
) -> dict[str, Any]:
    """Run ``path`` in a fresh process, sampling the memory of its process tree.

    With ``before``, the child imports the build installed there instead of this one.
    """
    build = build_label(before)
    result_file = scratch / f"{path}-{devices}-{build}.json"
    command = [
        sys.executable,
        __file__,
        "--child",
        path,
        "--devices",
        str(devices),
        "--per-round",
        str(per_round),
        "--rounds",
        str(rounds),
        "--result",
        str(result_file),
        "--launched",
        repr(time.time()),
    ]
    launched = time.perf_counter()
    child = subprocess.Popen(command, env=build_env(before))
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss(child.pid))
            done.wait(MEMORY_SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    done.set()
    sampler.join()
    if code != 0:
        return {
            "path": path,
            "build": build,
            "devices": devices,
            "per_round": per_round,
            "error": f"exit code {code}",
        }
    raw = json.loads(result_file.read_text())
    marks = raw["marks"]
    # Round i ends at marks[i]; rounds 2 .. R-1 are the intervals between marks[1] and
    # marks[R-1]. Round R is left out: Stamen reports it after the final central evaluation.
    steady = [
        (later[2], later[1] - earlier[1]) for earlier, later in itertools.pairwise(marks[1:-1])
    ]
    updates = sum(n for n, _ in steady)
    seconds = sum(s for _, s in steady)
    return {
        "path": path,
        "build": build,
        "devices": devices,
        "per_round": per_round,
        "rounds": rounds,
        "updates_per_second": updates / seconds if seconds else None,
        "first_round_seconds": marks[0][1] - raw["started"],
        "first_round_seconds_from_launch": marks[0][1] - raw["started"] + raw["since_launch"],
        "peak_memory_mib": peak[0] / 2**20,
        "wall_seconds": time.perf_counter() - launched,
    }


def main() -> None:
    """Run every path at every scale, then write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--scales", nargs="+", default=["1000:100", "10000:1000"])
    parser.add_argument(
        "--model-scale", default="10000:1000", help="devices:per-round of the model rows"
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="rounds per run; the first and last are not timed"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of every path, interleaved (default 3)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--before",
        type=Path,
        help="also run the Stamen local paths on the build installed in this folder",
    )
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-round", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_path(args.child, args.devices, args.per_round, args.rounds, args.launched)
        args.result.write_text(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(path, scale) for scale in args.scales for path in args.paths if path in W1_PATHS] + [
        (path, args.model_scale) for path in args.paths if path in MODEL_PATHS
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-throughput-") as scratch:
        for repeat, (path, scale) in itertools.product(range(args.repeats), runs):
            devices, per_round = (int(v) for v in scale.split(":"))
            builds = [None]
            if args.before is not None and path.startswith("stamen-local"):
                builds.append(args.before)
            for before in builds:
                label = "the earlier build" if before else "this build"
                print(
                    f"== {path} at {devices} devices, {per_round} per round, {label}, "
                    f"run {repeat + 1} of {args.repeats}",
                    flush=True,
                )
                row = measure(path, devices, per_round, args.rounds, Path(scratch), before)
                row["repeat"] = repeat
                print(json.dumps(row), flush=True)
                rows.append(row)
                (args.out / "fleet_throughput.json").write_text(json.dumps(rows, indent=2) + "\n")
    markdown = to_markdown(rows)
    (args.out / "fleet_throughput.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
