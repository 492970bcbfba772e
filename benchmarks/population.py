"""Benchmark: what a registered device costs, at 10,000, 100,000 and 1,000,000 devices.

Each fleet size runs in a fresh process, one after another, in one invocation: the
equivalent of

    stamen simulate --num-devices N --devices-per-round 1000 --rounds 3 \\
        --samples-per-device 60 --local-epochs 1 --batch-size 20

(MNIST, the edge preset, so every device that trains keeps an error-feedback residual; the
mixed fleet, so availability and tiers are drawn for every registered device; 60 rows per
device drawn with replacement by its id and the seed, as in workload W1). For each it
reports the peak memory of the whole process tree (PSS), the time from Python's start to
the start of round 1 and the length of round 1, and what the server holds for the devices:
the residuals of those that trained (in memory up to ``federation.state_memory_mb``, then
on disk). Bytes per idle device come three ways: what the grid keeps between rounds per
registered device, what sampling allocates for a moment (traced in this process), and the
slope of the peak memory from the smallest to the largest fleet. Writes
``population.json`` and ``population.md`` into ``--out``.

    python benchmarks/population.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from federation_runs import QUIET, RoundMarks, child_command, child_main, run_child, timings

os.environ.update(QUIET)

SIZES = (10_000, 100_000, 1_000_000)
PER_ROUND = 1_000
ROUNDS = 3
MEMORY_LIMIT_MIB = 2048
FIRST_ROUND_LIMIT_SECONDS = 5.0


def overrides(devices: int, per_round: int, rounds: int) -> dict[str, Any]:
    """The run at one fleet size: the CLI's defaults, with W1's data and local training."""
    return {
        "num-devices": devices,
        "devices-per-round": per_round,
        "rounds": rounds,
        "data.samples_per_device": 60,
        "local-epochs": 1,
        "batch-size": 20,
    }


def run_population(settings: dict[str, Any], started: float) -> dict[str, Any]:
    """In the child: run the federation; note what the device-state store held at the end."""
    import logging

    from stamen.config import load_config
    from stamen.launch import simulate
    from stamen.simulations.device_states import DeviceStates

    logging.disable(logging.WARNING)
    held: dict[str, int] = {}
    close = DeviceStates.close

    def noting_close(self: DeviceStates) -> None:
        held.update(
            devices_with_state=len(self),
            state_bytes_in_memory=self.memory_bytes,
            devices_spilled=self.spilled_devices,
            state_bytes_spilled=self.spilled_bytes,
        )
        close(self)

    DeviceStates.close = noting_close  # type: ignore[method-assign]
    marks = RoundMarks()
    summary = simulate(load_config(overrides=settings), marks)
    return {
        **timings(marks.marks, started),
        "first_round_start_cpu_seconds": marks.start_cpu_seconds,
        **held,
        "final_accuracy": summary["final_accuracy"],
        "participants": summary["participants"],
        "preset": summary["config"]["preset"],
    }


def sampling_bytes_per_device(devices: int) -> dict[str, float]:
    """What drawing who is online, sampling and drawing dropouts allocate, per registered
    device, traced in this process; and what the fleet keeps (its tiers)."""
    import numpy as np

    from stamen.config import FleetPreset, fleet_mix
    from stamen.simulations.profiles import build_fleet
    from stamen.simulations.sim_grid import NodeIds

    fleet = build_fleet(fleet_mix(FleetPreset.MIXED), devices, seed=0)
    tracemalloc.start()
    ids = np.sort(np.asarray(NodeIds(fleet.online(0.0) + 1)))
    np.random.default_rng(0).choice(len(ids), size=PER_ROUND, replace=False)
    fleet.dropouts(0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "held_between_rounds": fleet.tier_index.nbytes / devices,
        "sampling_peak": peak / devices,
    }


def to_markdown(result: dict[str, Any]) -> str:
    """The table for the docs."""
    lines = [
        "| registered devices | peak memory (tree PSS) | start to round 1 (server CPU) "
        "| round 1 | devices with state | their state in memory / on disk |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['devices']:,} | {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['devices']:,} | {row['peak_memory_mib']:.0f} MiB "
            f"| {row['first_round_start_seconds']:.2f} s "
            f"({row['first_round_start_cpu_seconds']:.2f} s) "
            f"| {row['first_round_seconds']:.2f} s "
            f"| {row['devices_with_state']:,} | {row['state_bytes_in_memory'] / 2**20:.0f} MiB / "
            f"{row['state_bytes_spilled'] / 2**20:.0f} MiB |"
        )
    per = result["bytes_per_idle_device"]
    lines += [
        "",
        f"Bytes per idle registered device: {per['held_between_rounds']:.0f} held between "
        f"rounds (its tier), {per['sampling_peak']:.0f} allocated for the moment of sampling, "
        f"{per['peak_memory_slope']:.0f} by the slope of the peak memory from "
        f"{result['rows'][0]['devices']:,} to {result['rows'][-1]['devices']:,} devices. "
        f"A device that trained keeps its residual: {per['trained_device_state']:,.0f} bytes.",
        "",
        f"Command: `{result['command']}`; {result['per_round']} devices a round, "
        f"{result['rounds']} rounds. {result['machine']}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--per-round", type=int, default=PER_ROUND)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--note", default="", help="what the machine was doing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for devices in args.sizes:
        result_file = args.out / f"population-{devices}.json"
        settings = overrides(devices, args.per_round, args.rounds)
        command = child_command(__file__, settings, result_file)
        row = {"devices": devices, **run_child(command, result_file, args.timeout)}
        result_file.unlink(missing_ok=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    done = [row for row in rows if "error" not in row]
    per_device = sampling_bytes_per_device(max(args.sizes))
    slope = (
        (done[-1]["peak_memory_mib"] - done[0]["peak_memory_mib"])
        * 2**20
        / (done[-1]["devices"] - done[0]["devices"])
        if len(done) > 1
        else float("nan")
    )
    trained = [r["state_bytes_in_memory"] + r["state_bytes_spilled"] for r in done]
    with_state = [r["devices_with_state"] for r in done]
    result = {
        "command": (
            "python benchmarks/population.py --sizes " + " ".join(str(size) for size in args.sizes)
        ),
        "per_round": args.per_round,
        "rounds": args.rounds,
        "machine": args.note,
        "rows": rows,
        "bytes_per_idle_device": {
            **per_device,
            "peak_memory_slope": slope,
            "trained_device_state": sum(trained) / max(1, sum(with_state)),
        },
        "acceptance": {
            "memory_limit_mib": MEMORY_LIMIT_MIB,
            "first_round_limit_seconds": FIRST_ROUND_LIMIT_SECONDS,
            "largest_within_memory": bool(done) and done[-1]["peak_memory_mib"] <= MEMORY_LIMIT_MIB,
            "largest_first_round_start_within_limit": bool(done)
            and done[-1]["first_round_start_seconds"] <= FIRST_ROUND_LIMIT_SECONDS,
        },
    }
    (args.out / "population.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "population.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(run_population)
    else:
        main()
