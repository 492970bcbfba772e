"""The device table as the console pages it: sorted, filtered, one screenful at a time.

:class:`DevicePages` holds the devices the monitor sent (a snapshot, then the
changes) and answers for the page on screen. Only that page becomes table
rows, so a fleet of 10,000 devices costs the terminal what a screenful does.
Sorting and filtering happen here, in the console, not on the server: the
server sends each change once, and a key press needs no round trip
(``benchmarks/console_scale.py`` measures both ways).

Examples:
    >>> from stamen.protos.monitor.v1 import monitor_pb2 as pb
    >>> pages = DevicePages(page_size=2)
    >>> pages.apply(pb.DeviceChanges(snapshot=True, version=3, devices=[
    ...     pb.Device(node_id=n, tier="phone" if n % 2 else "mcu") for n in (1, 2, 3)]))
    >>> [d.node_id for d in pages.page()], pages.position()
    ([1, 2], (1, 2, 3))
    >>> pages.set_filter(DeviceFilter.parse("tier:mcu"))
    >>> [d.node_id for d in pages.page()]
    [2]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stamen.protos.monitor.v1 import monitor_pb2 as pb

DEVICE_STATE_NAMES = {
    value: name.removeprefix("DEVICE_STATE_").lower() for name, value in pb.DeviceState.items()
}

DEVICE_COLUMNS = ("node", "tier", "state", "rounds", "up", "down", "rej", "seen")
"""The device table's columns; each sorts by its own key."""

ASCENDING_FIRST = frozenset({"node", "tier", "state"})
"""Columns that sort ascending when first chosen; the others show the largest first."""


def device_sort_key(column: str) -> Callable[[Any], Any]:
    """A sort key for ``column`` over ``Device`` messages (ties by node id)."""
    keys: dict[str, Callable[[Any], Any]] = {
        "node": lambda d: d.node_id,
        "tier": lambda d: (d.tier, d.node_id),
        "state": lambda d: (DEVICE_STATE_NAMES.get(d.state, ""), d.node_id),
        "rounds": lambda d: (d.rounds, d.node_id),
        "up": lambda d: (d.uplink_bytes, d.node_id),
        "down": lambda d: (d.downlink_bytes, d.node_id),
        "rej": lambda d: (d.rejected, d.node_id),
        "seen": lambda d: (d.last_seen_unix, d.node_id),
    }
    return keys[column]


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices the table shows: by state, by tier, and by text in the node id.

    Examples:
        >>> found = DeviceFilter.parse("straggling tier:phone,iot 12")
        >>> sorted(found.states), sorted(found.tiers), found.text
        (['straggling'], ['iot', 'phone'], '12')
        >>> found.describe()
        'state:straggling tier:iot,phone 12'
    """

    states: frozenset[str] = frozenset()
    tiers: frozenset[str] = frozenset()
    text: str = ""

    @classmethod
    def parse(cls, query: str) -> DeviceFilter:
        """Read ``state:NAME[,NAME]`` (or a bare state name), ``tier:NAME[,NAME]`` and id text."""
        states: set[str] = set()
        tiers: set[str] = set()
        text: list[str] = []
        known = set(DEVICE_STATE_NAMES.values())
        for word in query.split():
            key, sep, value = word.partition(":")
            if sep and key == "state":
                states.update(v for v in value.split(",") if v)
            elif sep and key == "tier":
                tiers.update(v for v in value.split(",") if v)
            elif word.lower() in known:
                states.add(word.lower())
            else:
                text.append(word)
        return cls(frozenset(states), frozenset(tiers), " ".join(text))

    def __bool__(self) -> bool:
        return bool(self.states or self.tiers or self.text)

    def describe(self) -> str:
        """The filter as the words :meth:`parse` reads."""
        words = []
        if self.states:
            words.append("state:" + ",".join(sorted(self.states)))
        if self.tiers:
            words.append("tier:" + ",".join(sorted(self.tiers)))
        if self.text:
            words.append(self.text)
        return " ".join(words)

    def keeps(self, device: Any) -> bool:
        """Whether ``device`` passes."""
        if self.states and DEVICE_STATE_NAMES.get(device.state, "") not in self.states:
            return False
        if self.tiers and device.tier not in self.tiers:
            return False
        return not self.text or self.text in str(device.node_id)


class DevicePages:
    """The console's copy of the monitor's device table, and the page of it on screen."""

    def __init__(self, page_size: int = 10) -> None:
        self.devices: dict[int, Any] = {}
        self.table_id = ""
        self.version = 0
        self.sort_column = "node"
        self.sort_reverse = False
        self.filter = DeviceFilter()
        self.page_size = max(1, page_size)
        self.offset = 0
        self._order: list[Any] | None = None

    # -- what the monitor sends ------------------------------------------------------

    def apply(self, changes: Any) -> None:
        """Fold in a ``DeviceChanges`` message: a snapshot replaces, a delta updates."""
        if changes.snapshot:
            self.devices = {}
        for device in changes.devices:
            self.devices[int(device.node_id)] = device
        self.table_id = str(changes.table_id)
        self.version = int(changes.version)
        if changes.snapshot or len(changes.devices):
            self._order = None

    # -- what the operator chooses ---------------------------------------------------

    def sort_by(self, column: str) -> None:
        """Sort by ``column``; the same column again flips the order."""
        if column not in DEVICE_COLUMNS:
            raise ValueError(f"no device column {column!r}")
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, column not in ASCENDING_FIRST
        self._order = None

    def next_sort(self) -> None:
        """Sort by the next column."""
        index = DEVICE_COLUMNS.index(self.sort_column)
        self.sort_by(DEVICE_COLUMNS[(index + 1) % len(DEVICE_COLUMNS)])

    def set_filter(self, device_filter: DeviceFilter) -> None:
        """Show only the devices ``device_filter`` keeps, from the first page."""
        self.filter = device_filter
        self.offset = 0
        self._order = None

    def resize(self, page_size: int) -> None:
        """Rows that fit on screen."""
        self.page_size = max(1, page_size)
        self._clamp()

    def scroll(self, rows: int) -> None:
        """Move the page by ``rows`` (negative: up)."""
        self.offset += rows
        self._clamp()

    def page_down(self) -> None:
        """The next page."""
        self.scroll(self.page_size)

    def page_up(self) -> None:
        """The previous page."""
        self.scroll(-self.page_size)

    def home(self) -> None:
        """The first page."""
        self.offset = 0

    def end(self) -> None:
        """The last page."""
        self.offset = len(self.ordered())
        self._clamp()

    # -- what the table shows --------------------------------------------------------

    def ordered(self) -> list[Any]:
        """The devices that pass the filter, in the chosen order (cached until a change)."""
        if self._order is None:
            devices = self.devices.values()
            kept = [d for d in devices if self.filter.keeps(d)] if self.filter else list(devices)
            kept.sort(key=device_sort_key(self.sort_column), reverse=self.sort_reverse)
            self._order = kept
        return self._order

    def page(self) -> list[Any]:
        """The devices on screen."""
        self._clamp()
        return self.ordered()[self.offset : self.offset + self.page_size]

    def position(self) -> tuple[int, int, int]:
        """First and last row on screen (1-based; 0, 0 when empty) and how many rows pass."""
        total = len(self.ordered())
        if not total:
            return 0, 0, 0
        return self.offset + 1, min(self.offset + self.page_size, total), total

    def _clamp(self) -> None:
        total = len(self.ordered())
        self.offset = max(0, min(self.offset, total - self.page_size))
