"""Make the README's console screenshot from a real run.

Runs a small real federation (digits, MLP) with the monitor, drives the
console headless at 80x24 with Textual's pilot, pauses the run after a few
rounds, saves Textual's SVG screenshot and converts it to PNG with cairosvg.
The run is stopped cleanly at the end.

Examples:
    python scripts/console_screenshot.py                       # docs/console.png
    python scripts/console_screenshot.py --rounds-before 12 --out shot.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshot-operator-token"


async def capture(rounds_before: int, svg_path: Path, size: tuple[int, int]) -> None:
    """Run the federation and the console; write the SVG screenshot to ``svg_path``."""
    from stamen.config import load_config
    from stamen.console import ConnectionSettings, ConsoleApp
    from stamen.launch import simulate
    from stamen.server.control import RunState
    from stamen.server.monitor import MonitoredRun, MonitorSettings, Role, TokenStore

    config = load_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "rounds": 40,
            "num-devices": 12,
            "devices-per-round": 4,
        }
    )
    settings = MonitorSettings(tokens=TokenStore({TOKEN: Role.OPERATOR}))
    with MonitoredRun(config, settings) as run:
        run.run_in_background(simulate)
        app = ConsoleApp(ConnectionSettings(run.server.address, TOKEN), poll_interval=0.2)
        async with app.run_test(size=size) as pilot:

            async def until(predicate: object, what: str, timeout: float = 600) -> None:
                deadline = time.monotonic() + timeout
                while not predicate():  # type: ignore[operator]
                    if time.monotonic() > deadline:
                        raise SystemExit(f"gave up waiting for {what}")
                    await pilot.pause(0.1)

            await until(lambda: app.view.rounds_done >= rounds_before, "the first rounds")
            await pilot.press("p")
            await until(lambda: run.control.state is RunState.PAUSED, "the pause")
            await until(lambda: "paused" in app.header_lines()[0], "the console to show it")
            await until(
                lambda: len(app.table.pages.devices) == len(run.state.devices()), "the devices"
            )
            await pilot.pause(0.5)
            app.save_screenshot(filename=svg_path.name, path=str(svg_path.parent))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "console.png")
    parser.add_argument("--rounds-before", type=int, default=10, help="rounds before the pause")
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=24)
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "console.svg"
        asyncio.run(capture(args.rounds_before, svg, (args.width, args.height)))
        try:
            import cairosvg
        except (ImportError, OSError):
            fallback = args.out.with_suffix(".svg")
            fallback.write_bytes(svg.read_bytes())
            print(f"cairosvg is unavailable; kept the SVG: {fallback}")
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cairosvg.svg2png(url=str(svg), write_to=str(args.out), output_width=args.width * 12)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
