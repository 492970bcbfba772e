"""The server side: the Stamen ServerApp, the federation loop and its results."""

from stamen.server.app import server_app
from stamen.server.control import ControlRefused, RunControl, RunState, StopRequested
from stamen.server.federation import build_strategy, run_federation, train_task
from stamen.server.reporting import (
    CollectingReporter,
    HeapFreezer,
    Reporters,
    RoundRecord,
    RoundReporter,
)
from stamen.server.results import ResultsWriter, plot_rounds

__all__ = [
    "CollectingReporter",
    "ControlRefused",
    "HeapFreezer",
    "Reporters",
    "ResultsWriter",
    "RoundRecord",
    "RoundReporter",
    "RunControl",
    "RunState",
    "StopRequested",
    "build_strategy",
    "plot_rounds",
    "run_federation",
    "server_app",
    "train_task",
]
