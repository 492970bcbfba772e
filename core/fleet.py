"""What a strategy may ask of a Grid beyond Flower's interface: tiers, a clock, a round policy.

Strategies talk to Flower's :class:`~flwr.serverapp.Grid`. Stamen's own grids
(the simulation grid, the edge grid) also know each device's tier, keep a
clock (simulated or real), and can close a round at a deadline or once enough
devices have answered (over-selection). These protocols let a strategy use
those extras where a grid has them and run unchanged where it does not.

Examples:
    >>> from flwr.serverapp import Grid
    >>> policy = RoundPolicy(quorum=10, deadline=120.0)
    >>> policy.quorum, policy.deadline
    (10, 120.0)
    >>> isinstance(object(), TieredGrid)
    False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stamen.core.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import Message


@dataclass(frozen=True)
class RoundPolicy:
    """When a round closes: after ``quorum`` accepted replies or at ``deadline``, first wins.

    Over-selection samples more devices than ``quorum``; the first ``quorum``
    to answer make the round and the rest are discarded as surplus. Replies
    later than ``deadline`` seconds after dispatch are stragglers and dropped.
    """

    quorum: int | None = None
    """Replies that complete a round; ``None`` waits for every device."""
    deadline: float | None = None
    """Seconds after dispatch; ``None`` waits as long as it takes."""

    def __post_init__(self) -> None:
        if self.quorum is not None and self.quorum < 1:
            raise ConfigError(f"round quorum must be >= 1; got {self.quorum}")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigError(f"round deadline must be > 0 seconds; got {self.deadline}")


@dataclass(frozen=True)
class RoundTiming:
    """How the last exchange of messages went, as the grid saw it."""

    dispatched: int
    """Messages sent to devices."""
    participants: int
    """Replies handed to the strategy."""
    stragglers: int = 0
    """Devices that answered after the deadline; their replies were dropped."""
    dropouts: int = 0
    """Devices that went away mid-round and never answered."""
    surplus: int = 0
    """Over-selected devices that answered after the quorum was reached."""
    seconds: float = 0.0
    """Duration of the exchange on the grid's clock (simulated seconds on a simulation)."""
    clock: float = 0.0
    """The grid's clock when the exchange closed."""
    straggler_ids: tuple[int, ...] = ()
    """Which devices were the stragglers, where the grid tells (the monitor shows them)."""
    dropout_ids: tuple[int, ...] = ()
    """Which devices dropped out, where the grid tells."""


@runtime_checkable
class TieredGrid(Protocol):
    """A grid that knows each device's hardware tier (e.g. ``mcu``, ``iot``, ``phone``)."""

    def tier_of(self, node_id: int) -> str | None:
        """The tier name of ``node_id``, or ``None`` if unknown."""
        ...


@runtime_checkable
class PolicyGrid(Protocol):
    """A grid that closes rounds by a :class:`RoundPolicy` and reports their timing."""

    @property
    def now(self) -> float:
        """Seconds on the grid's clock since the run started."""
        ...

    def set_round_policy(self, policy: RoundPolicy) -> None:
        """Apply ``policy`` to the following ``send_and_receive`` calls."""
        ...

    def last_timing(self) -> RoundTiming | None:
        """Timing of the most recent ``send_and_receive``, if any."""
        ...


@runtime_checkable
class StreamingGrid(Protocol):
    """A grid that shows each reply to a hook as it arrives, before the exchange closes.

    A strategy can then check replies while the rest of the devices still work,
    instead of all at once after the last one.
    """

    def on_each_reply(self, hook: Callable[[Message], None] | None) -> None:
        """Call ``hook`` with every reply as it arrives (``None``: stop)."""
        ...
