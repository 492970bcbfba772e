"""One round engine that drives every strategy, synchronous or asynchronous, through typed hooks."""

from stamen.core.rounds import RoundOutcome, RoundStrategy, Stateful
from stamen.engine.hooks import RoundHooks
from stamen.engine.loop import EngineResult, RoundEngine
from stamen.engine.rounds import SynchronousRounds, rounds_of

__all__ = [
    "EngineResult",
    "RoundEngine",
    "RoundHooks",
    "RoundOutcome",
    "RoundStrategy",
    "Stateful",
    "SynchronousRounds",
    "rounds_of",
]
