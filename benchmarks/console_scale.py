"""The console and the monitor at fleet scale: what a device table of N devices costs.

For each fleet size, a real monitor service on loopback holds one round of N
devices (``tests/console_fleet.py`` feeds its state as a real round would),
and this measures, in the same process and run:

- **on the wire**: the whole device list (``ListDevices``, what the console
  fetched every second before) against the device stream (``WatchDevices``):
  its snapshot once, then one delta after a round that touches a tenth of the
  fleet (bytes and milliseconds to reach the client);
- **sort and page, where**: in the console (``DevicePages``, the choice made)
  against on the server (the same code behind a unary gRPC call that returns
  one page: a round trip per key press, and a re-sort on the server per
  console poll whenever the table has changed);
- **the screen**: a Textual ``DataTable`` holding every row (the console
  before) against the paged table, and the real console driven headless at
  80x24: first paint of the device table, a sort (``o``) and a page (PgDn,
  End), next to an empty console's first paint (Textual's own start-up).

Figures are medians of ``--repeat`` tries. The machine's load per core is
recorded: on a shared machine every figure stretches with it, ratios less.

    python benchmarks/console_scale.py                 # 1,000, 3,000 and 10,000 devices
    python benchmarks/console_scale.py --sizes 10000 --repeat 3

Writes ``console_scale.json`` and ``console_scale.md`` into ``--results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from console_fleet import populate  # noqa: E402
from console_screen import TOKEN, empty_console_ms, full_table_ms, screen  # noqa: E402

from stamen.console import ConnectionSettings, MonitorClient  # noqa: E402
from stamen.console.devices import DEVICE_COLUMNS, DeviceFilter, DevicePages  # noqa: E402
from stamen.protos.monitor.v1 import monitor_pb2 as pb  # noqa: E402
from stamen.server.monitor import (  # noqa: E402
    MonitorSettings,
    MonitorState,
    Role,
    TokenStore,
    start_monitor,
)

PAGE_SERVICE = "bench.ServerPages"


def median_ms(
    action: Callable[[], Any], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median milliseconds of ``action`` on ``clock`` (wall time unless told)."""
    times = []
    for _ in range(repeat):
        started = clock()
        action()
        times.append(1000 * (clock() - started))
    return statistics.median(times)


class ServerPages:
    """The alternative: the server keeps the table sorted and paged, and serves one page.

    It follows the monitor's state through the same deltas the console gets,
    and answers a request ``"column reverse offset size filter"`` with a
    ``DeviceList`` of that page. Its CPU time per request is what each console
    would cost the server, on the federation's interpreter.
    """

    def __init__(self, state: MonitorState) -> None:
        self.state = state
        self.pages = DevicePages()
        self.cpu_ms: list[float] = []
        self._lock = threading.Lock()

    def page(self, request: bytes, context: Any) -> bytes:
        started = time.thread_time()
        column, reverse, offset, size, *words = request.decode().split(" ")
        with self._lock:
            pages = self.pages
            version, changed, _ = self.state.device_changes(pages.version)
            pages.apply(pb.DeviceChanges(version=version, devices=changed))
            if (column, reverse == "1") != (pages.sort_column, pages.sort_reverse):
                pages.sort_column, pages.sort_reverse = column, reverse == "1"
                pages.set_filter(pages.filter)  # drops the cached order
            wanted = DeviceFilter.parse(" ".join(words))
            if wanted != pages.filter:
                pages.set_filter(wanted)
            pages.page_size, pages.offset = int(size), int(offset)
            reply = pb.DeviceList(devices=pages.page()).SerializeToString()
        self.cpu_ms.append(1000 * (time.thread_time() - started))
        return bytes(reply)

    def invalidate(self) -> None:
        """The table changed: the next page needs a new order (as after a delta)."""
        with self._lock:
            self.pages.set_filter(self.pages.filter)


def serve(state: MonitorState) -> tuple[Any, ServerPages]:
    """The real monitor service, plus the server-side paging alternative on the same server."""
    import grpc

    server = start_monitor(MonitorSettings(tokens=TokenStore({TOKEN: Role.OPERATOR})), state)
    pages = ServerPages(state)
    handler = grpc.method_handlers_generic_handler(
        PAGE_SERVICE, {"Page": grpc.unary_unary_rpc_method_handler(pages.page)}
    )
    server.server.add_generic_rpc_handlers((handler,))
    return server, pages


def wire(address: str, state: MonitorState, num_devices: int, repeat: int) -> dict[str, Any]:
    """The whole list against the device stream: bytes and milliseconds."""
    client = MonitorClient(ConnectionSettings(address, TOKEN), timeout=60)
    client.devices()  # the channel is open before anything is timed
    full = pb.DeviceList(devices=client.devices()).ByteSize()
    result: dict[str, Any] = {
        "list_bytes": full,
        "list_ms": median_ms(client.devices, repeat),
    }
    snapshots = []
    for _ in range(repeat):
        started = time.perf_counter()
        stream = client.watch_devices(interval=0.05)
        first = next(stream)
        snapshots.append(1000 * (time.perf_counter() - started))
        stream.close()
    result["snapshot_ms"] = statistics.median(snapshots)
    result["snapshot_bytes"] = first.ByteSize()
    # A round that samples a tenth of the fleet: sent, then every device answers.
    stream = client.watch_devices(first.table_id, first.version, interval=0.05)
    next(stream)  # in step
    touched = range(1, num_devices // 10 + 1)
    delta_bytes = 0
    started = time.perf_counter()
    state.round_started(2, touched)
    for node in touched:
        state.device_replied(2, node, uplink_bytes=100)
    seen: set[int] = set()
    while len(seen) < len(touched):
        changes = next(stream)
        delta_bytes += changes.ByteSize()
        seen.update(d.node_id for d in changes.devices)
    result["round_delta_ms"] = 1000 * (time.perf_counter() - started)
    result["round_delta_bytes"] = delta_bytes
    stream.close()
    client.close()
    return result


def sorting(address: str, pages_served: ServerPages, repeat: int) -> dict[str, Any]:
    """Sort, filter and page in the console against on the server."""
    import grpc

    client = MonitorClient(ConnectionSettings(address, TOKEN))
    local = DevicePages(page_size=9)
    local.apply(next(client.watch_devices()))
    client.close()

    def local_sort(column: str) -> Callable[[], Any]:
        def action() -> None:
            local.sort_by(column)
            local.page()

        return action

    def local_page() -> None:
        local.page_down()
        local.page()

    def local_filter() -> None:
        local.set_filter(DeviceFilter.parse("tier:phone 7"))
        local.page()

    # CPU time: on a shared machine, wall time mostly measures the wait for a core.
    cpu = time.thread_time
    sort_ms = [median_ms(local_sort(column), repeat, cpu) for column in DEVICE_COLUMNS]
    result: dict[str, Any] = {
        "console_sort_cpu_ms": statistics.median(sort_ms),
        "console_page_cpu_ms": median_ms(local_page, repeat, cpu),
        "console_filter_cpu_ms": median_ms(local_filter, repeat, cpu),
    }
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(f"/{PAGE_SERVICE}/Page")
    call(b"node 0 0 9")

    def remote(request: str, invalidate: bool = False) -> Callable[[], Any]:
        def action() -> None:
            if invalidate:
                pages_served.invalidate()
            pb.DeviceList.FromString(call(request.encode()))

        return action

    # Each request re-sorts, as after a sort key or a poll once a round changed the table.
    pages_served.cpu_ms.clear()
    result["server_sort_ms"] = statistics.median(
        median_ms(remote(f"{column} 1 0 9", invalidate=True), repeat) for column in DEVICE_COLUMNS
    )
    result["server_sort_cpu_ms"] = statistics.median(pages_served.cpu_ms)
    result["server_page_ms"] = median_ms(remote("up 1 9 9"), repeat)
    channel.close()
    return result


def measure(num_devices: int, repeat: int) -> dict[str, Any]:
    """Every figure for one fleet size."""
    figures: dict[str, Any] = {"devices": num_devices, **screen(num_devices, repeat)}
    state = MonitorState()
    state.on_start(total_rounds=5, initial_accuracy=0.1)
    populate(state, num_devices)
    server, pages_served = serve(state)
    try:
        figures.update(sorting(server.address, pages_served, repeat))
        client = MonitorClient(ConnectionSettings(server.address, TOKEN), timeout=60)
        figures["full_table_ms"] = asyncio.run(full_table_ms(client.devices()))
        client.close()
        figures.update(wire(server.address, state, num_devices, repeat))
    finally:
        server.stop()
    return figures


SCREEN = [
    ("devices", "devices", "{:,}"),
    ("console_first_paint_ms", "first paint ms", "{:.0f}"),
    ("console_first_paint_cpu_ms", "(CPU ms)", "{:.0f}"),
    ("console_key_sort_ms", "sort key ms", "{:.0f}"),
    ("console_key_sort_cpu_ms", "(CPU ms)", "{:.0f}"),
    ("console_key_page_ms", "page key ms", "{:.0f}"),
    ("console_key_page_cpu_ms", "(CPU ms)", "{:.0f}"),
    ("full_table_ms", "every row a DataTable row ms", "{:.0f}"),
]
"""The screen: the real console at 80x24, and the table that held every device before."""

WIRE = [
    ("devices", "devices", "{:,}"),
    ("console_sort_cpu_ms", "sort in console, CPU ms", "{:.1f}"),
    ("server_sort_ms", "sort on server, RPC ms", "{:.1f}"),
    ("server_sort_cpu_ms", "server CPU per sort ms", "{:.1f}"),
    ("list_bytes", "whole list bytes", "{:,}"),
    ("list_ms", "whole list ms", "{:.0f}"),
    ("snapshot_ms", "snapshot ms", "{:.0f}"),
    ("round_delta_bytes", "delta of a round of N/10 bytes", "{:,}"),
]
"""Where to sort, and what goes on the wire."""


def table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of ``rows``."""
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The results tables."""
    machine = result["machine"]
    lines = [
        *table(SCREEN, result["sizes"]),
        "",
        "An empty console's first paint (Textual's start-up, nothing to show), wall/CPU ms: "
        "{:.0f}/{:.0f} first in the process, as `stamen console` starts; {:.0f}/{:.0f} after "
        "that, as the first paints above. ".format(
            *result["empty_console_cold_ms"], *result["empty_console_ms"]
        )
        + "CPU times are the console process's (the monitor runs in another); on a quiet "
        "machine the wall time comes close to them.",
        "",
        *table(WIRE, result["sizes"]),
        "",
        f"Machine: {machine['cpus']} cores, load per core {machine['load_per_core']:.1f} at the "
        f"start and {machine['load_per_core_at_end']:.1f} at the end (shared: absolute times "
        "stretch with the load, CPU times and ratios less).",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 3_000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/console_scale.py", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "load_per_core": load},
        # Textual's start-up: first in the process (as `stamen console` starts), then again.
        "empty_console_cold_ms": asyncio.run(empty_console_ms()),
        "empty_console_ms": asyncio.run(empty_console_ms()),
        "sizes": [],
    }
    for size in args.sizes:
        figures = measure(size, args.repeat)
        result["sizes"].append(figures)
        print(json.dumps(figures))
    result["machine"]["load_per_core_at_end"] = os.getloadavg()[0] / (os.cpu_count() or 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "console_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "console_scale.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
