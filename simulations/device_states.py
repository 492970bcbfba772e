"""Each simulated device's state between its tasks: compact, bounded in memory, spilled to disk.

A device has state only once it has trained: its ``Context.state``, in practice the
error-feedback residual (about 41 KB in float16 for the W1 LeNet). A registered device
that never trained costs nothing here. The store keeps each state as the pickled bytes a
worker sent, so the server never unpickles it, in memory up to a budget; beyond it, the
states of the devices that trained longest ago move to an SQLite file in a temporary
folder and come back when their device is next sampled. A million devices a thousand a
round eventually touch every residual (41 GB of LeNet residuals); memory stays at the budget.

Examples:
    >>> states = DeviceStates(memory_budget=10)
    >>> states.put(1, b"123456"); states.put(2, b"abcdef")  # over budget: device 1 spills
    >>> states.memory_bytes, states.spilled_devices, len(states)
    (6, 1, 2)
    >>> states.take(1), states.take(1), states.spilled_devices
    (b'123456', None, 0)
    >>> states.close()
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of device state the server keeps in memory: about 6,000 W1 LeNet residuals,
several rounds of a thousand devices; the rest waits on disk."""


class DeviceStates:
    """Device id to its state's pickled bytes, at most ``memory_budget`` bytes of them in memory.

    Each state lives in one place: in memory, most recently stored last, or in the spill
    file. The spill file, and its folder, are made on the first spill and removed by
    :meth:`close` (or when the store is collected, or at exit).
    """

    def __init__(self, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        if memory_budget < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes; got {memory_budget}")
        self.memory_budget = memory_budget
        self._memory: OrderedDict[int, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._spill: sqlite3.Connection | None = None
        self._spilled_devices = 0
        self._spilled_bytes = 0
        self._cleanup: weakref.finalize | None = None

    def __len__(self) -> int:
        """Devices with a state, in memory or spilled."""
        return len(self._memory) + self._spilled_devices

    def __iter__(self) -> Iterator[int]:
        """The devices with a state: in memory, then spilled."""
        yield from list(self._memory)
        if self._spill is not None and self._spilled_devices:
            yield from [row[0] for row in self._spill.execute("SELECT device FROM states")]

    @property
    def memory_bytes(self) -> int:
        """Bytes of state held in memory."""
        return self._memory_bytes

    @property
    def spilled_devices(self) -> int:
        """Devices whose state waits in the spill file."""
        return self._spilled_devices

    @property
    def spilled_bytes(self) -> int:
        """Bytes of state in the spill file."""
        return self._spilled_bytes

    def put(self, device: int, state: bytes) -> None:
        """Keep ``state`` as ``device``'s, replacing any it had."""
        self._forget(device)
        self._memory[device] = state
        self._memory_bytes += len(state)
        while self._memory_bytes > self.memory_budget and self._memory:
            oldest, blob = self._memory.popitem(last=False)
            self._memory_bytes -= len(blob)
            self._spill_one(oldest, blob)

    def take(self, device: int) -> bytes | None:
        """Remove and return ``device``'s state; ``None`` when it has none."""
        state = self._memory.pop(device, None)
        if state is not None:
            self._memory_bytes -= len(state)
            return state
        if not self._spilled_devices or self._spill is None:
            return None
        row = self._spill.execute("SELECT state FROM states WHERE device = ?", (device,)).fetchone()
        if row is None:
            return None
        self._spill.execute("DELETE FROM states WHERE device = ?", (device,))
        blob = bytes(row[0])
        self._spilled_devices -= 1
        self._spilled_bytes -= len(blob)
        return blob

    def close(self) -> None:
        """Drop every state and remove the spill file."""
        self._memory.clear()
        self._memory_bytes = self._spilled_devices = self._spilled_bytes = 0
        if self._cleanup is not None:
            self._cleanup()
        self._spill = self._cleanup = None

    def _forget(self, device: int) -> None:
        old = self._memory.pop(device, None)
        if old is not None:
            self._memory_bytes -= len(old)
        elif self._spilled_devices:
            self.take(device)

    def _spill_one(self, device: int, state: bytes) -> None:
        if self._spill is None:
            self._spill = self._open_spill()
        self._spill.execute("INSERT INTO states (device, state) VALUES (?, ?)", (device, state))
        self._spilled_devices += 1
        self._spilled_bytes += len(state)

    def _open_spill(self) -> sqlite3.Connection:
        folder = Path(tempfile.mkdtemp(prefix="stamen-device-states-"))
        # A scratch file that dies with the run: no journal, no fsync. SQLite reuses the
        # pages of deleted states, so the file stays about as large as what is spilled.
        connection = sqlite3.connect(folder / "states.sqlite", isolation_level=None)
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("CREATE TABLE states (device INTEGER PRIMARY KEY, state BLOB NOT NULL)")
        self._cleanup = weakref.finalize(self, _remove_spill, connection, folder)
        return connection


def _remove_spill(connection: sqlite3.Connection, folder: Path) -> None:
    with contextlib.suppress(sqlite3.Error):
        connection.close()
    shutil.rmtree(folder, ignore_errors=True)
