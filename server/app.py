"""The Stamen ``ServerApp``.

Build one with :func:`server_app` (a config and a reporter in hand), or let
``flwr run`` load the module-level ``app``, which parses Flower's run config.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.config import StamenConfig, from_run_config
from stamen.contract import OUT_KEY
from stamen.server.checkpoint import CheckpointStore
from stamen.server.control import RunControl
from stamen.server.federation import run_federation
from stamen.server.reporting import Reporters, RoundReporter
from stamen.server.results import ResultsWriter


def server_app(
    config: StamenConfig | None = None,
    reporter: RoundReporter | None = None,
    control: RunControl | None = None,
    *,
    checkpoints: CheckpointStore | None = None,
) -> ServerApp:
    """Build the Stamen ``ServerApp``.

    Args:
        config: the federation's config; ``None`` parses ``context.run_config``.
        reporter: receives per-round records; ``None`` writes results only when
            the run config names an ``out`` directory.
        control: optional pause/stop/settings controls, checked between rounds.
        checkpoints: save after every round and resume from the last one.

    Examples:
        >>> from stamen.config import load_config
        >>> app = server_app(load_config(overrides={"dataset": "digits"}))
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        out = run_config.pop(OUT_KEY, None)
        resolved = config or from_run_config(run_config)
        writer = ResultsWriter(Path(str(out))) if out else None
        run_federation(
            grid, resolved, Reporters(reporter, writer), control, checkpoints=checkpoints
        )

    return app


app = server_app()
"""The app ``flwr run`` loads (``[tool.flwr.app.components]`` in pyproject.toml)."""
