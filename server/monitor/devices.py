"""The monitor's device table: one record per device, versioned so that clients get deltas.

Every change to a device gives it the table's next version number. A client
that holds version ``v`` of the table asks for :meth:`DeviceTable.changes_after`
``v`` and gets only the devices changed since, in time proportional to the
changes, not to the fleet: the table keeps its devices in the order they last
changed. The table's :attr:`~DeviceTable.table_id` is new for every table, so a
client that reconnects to another run (or a restarted server) knows to start
from a full snapshot.

The table is not thread-safe by itself: :class:`~stamen.server.monitor.state.MonitorState`
holds its lock around every call.

Examples:
    >>> table = DeviceTable()
    >>> table.touch(7).rounds += 1
    >>> table.touch(3).state = DeviceStatus.TRAINING
    >>> table.version, [(d.node_id, d.state) for d in table.changes_after(1)]
    (2, [(3, 2)])
    >>> table.touch(7).uplink_bytes += 10
    >>> [d.node_id for d in table.changes_after(1)]
    [3, 7]
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from stamen.protos.monitor.v1 import monitor_pb2 as pb


class DeviceStatus(enum.StrEnum):
    """What a device did last, as the server saw it."""

    IDLE = "idle"
    TRAINING = "training"
    REJECTED = "rejected"
    FAILED = "failed"
    STRAGGLING = "straggling"
    DROPPED_OUT = "dropped_out"
    NO_REPLY = "no_reply"


@dataclass
class DeviceRecord:
    """One device's history in this run."""

    node_id: int
    tier: str = ""
    state: DeviceStatus = DeviceStatus.IDLE
    last_seen: float = 0.0
    rounds: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    rejected: int = 0
    last_error: str = ""
    version: int = 0
    """The table's version when this record last changed."""


DEVICE_STATES = {status: getattr(pb, f"DEVICE_STATE_{status.name}") for status in DeviceStatus}
"""Python device states to their wire values."""


def device_message(device: DeviceRecord) -> Any:
    """A device record as a ``Device`` message."""
    return pb.Device(
        node_id=device.node_id,
        tier=device.tier,
        state=DEVICE_STATES[device.state],
        last_seen_unix=device.last_seen,
        rounds=device.rounds,
        uplink_bytes=device.uplink_bytes,
        downlink_bytes=device.downlink_bytes,
        rejected=device.rejected,
        last_error=device.last_error,
    )


@dataclass
class RoundSeen:
    """What the grid showed of one round in flight."""

    participants: list[int]
    replied: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    stragglers: list[int] | None = None
    """Which devices the grid counted as stragglers, where it said."""
    dropouts: list[int] | None = None
    """Which devices the grid counted as dropouts, where it said."""
    closed: bool = False
    """Whether the grid closed the round (a synchronous round); an asynchronous
    strategy's devices may still answer after its round is recorded."""


class DeviceTable:
    """Device records by node id, in the order they last changed."""

    def __init__(self) -> None:
        self.table_id = uuid.uuid4().hex
        self.version = 0
        # Insertion order is change order: a changed record is moved to the end.
        self._records: dict[int, DeviceRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def touch(self, node_id: int) -> DeviceRecord:
        """The record of ``node_id`` (made if new), marked as changed now; change it in place."""
        record = self._records.pop(node_id, None)
        if record is None:
            record = DeviceRecord(node_id)
        self.version += 1
        record.version = self.version
        self._records[node_id] = record
        return record

    def changes_after(self, version: int) -> list[Any]:
        """The records changed after ``version`` as ``Device`` messages, oldest change first.

        Messages rather than copies of the records: a snapshot of a large fleet
        is made once, straight into what goes on the wire.
        """
        changed = []
        for record in reversed(self._records.values()):
            if record.version <= version:
                break
            changed.append(device_message(record))
        changed.reverse()
        return changed

    def end_tasks(self) -> None:
        """The run is over: no device is training any more (an asynchronous strategy
        leaves tasks in flight when it stops)."""
        for node_id in [
            r.node_id for r in self._records.values() if r.state is DeviceStatus.TRAINING
        ]:
            self.touch(node_id).state = DeviceStatus.IDLE

    def all(self) -> list[DeviceRecord]:
        """Copies of every record, by node id."""
        return [replace(self._records[n]) for n in sorted(self._records)]

    def close_round(
        self, seen: RoundSeen, num_stragglers: int, num_dropouts: int
    ) -> tuple[list[int], list[int]]:
        """Which devices were a round's stragglers and dropouts; marks their states.

        The grid's own lists win. Without them, the devices that never answered
        are the stragglers or the dropouts where the counts leave no doubt. The
        other devices that never answered are marked as having sent no reply, once
        the grid has closed the round.
        """
        missing = [n for n in seen.participants if n not in seen.replied]
        stragglers = seen.stragglers if seen.stragglers is not None else []
        dropouts = seen.dropouts if seen.dropouts is not None else []
        if seen.stragglers is None and seen.dropouts is None:
            if num_dropouts == 0 and num_stragglers == len(missing):
                stragglers = missing
            elif num_stragglers == 0 and num_dropouts == len(missing):
                dropouts = missing
            elif num_stragglers == 0 and num_dropouts == len(missing) + len(seen.failed):
                # A grid that answers for a lost device with an error reply (the edge grid).
                dropouts = sorted([*missing, *seen.failed])
        for node_id in stragglers:
            self.touch(node_id).state = DeviceStatus.STRAGGLING
        for node_id in dropouts:
            self.touch(node_id).state = DeviceStatus.DROPPED_OUT
        counted = {*stragglers, *dropouts}
        for node_id in missing if seen.closed else ():
            if node_id not in counted:
                self.touch(node_id).state = DeviceStatus.NO_REPLY
        return stragglers, dropouts
