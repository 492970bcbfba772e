"""Which devices are still there: one deadline heap over every session, swept by one task.

A device shows it is alive by heartbeats (and uploads, and opening its task
stream); each one only stamps ``Session.last_seen``. Nothing runs per device:
:class:`Presence` keeps one heap entry per watched session, due when the
session's time would be up if nothing more came, and :meth:`Presence.due`
pops what is due, re-files the entries whose session has since been seen,
and hands back the rest. So a sweep costs O(log n) per entry that came due,
and an idle fleet of any size costs nothing between sweeps.

A session's time is up when its device

- has been silent for ``silent_periods`` heartbeat periods while its task
  stream is open (the stream alone does not prove the agent is alive);
- has been silent for ``gone_periods`` heartbeat periods once its task stream
  has closed (a killed agent's stream breaks at once; a live one training
  with a broken stream still sends heartbeats, and keeps its task);
- let its session expire and did not renew it within ``renewal_grace_periods``
  periods (its next heartbeat would have renewed it).

Examples:
    >>> from stamen.server.edge.sessions import Session
    >>> now = [0.0]
    >>> presence = Presence(clock=lambda: now[0])
    >>> session = Session("t", 7, "dev", b"k" * 32, expires=3600.0, last_seen=0.0)
    >>> presence.watch(session, streaming=True)
    >>> now[0] = 29.0; presence.due()
    []
    >>> session.last_seen = 29.0; now[0] = 31.0; presence.due()  # seen since: re-filed
    []
    >>> presence.closed(7); now[0] = 40.0; [(s.node_id, lapse.value) for s, lapse in presence.due()]
    [(7, 'gone')]
    >>> len(presence)
    0
"""

from __future__ import annotations

import enum
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from stamen.server.edge.sessions import Session

SILENT_PERIODS = 6
"""A device with an open task stream is gone after this many heartbeat periods of silence."""
GONE_PERIODS = 2
"""A device whose task stream closed is gone after this many periods of silence."""
RENEWAL_GRACE_PERIODS = 2
"""An expired session not renewed within this many periods is over: a live device's next
heartbeat is told "expired" and renews it, so only a silent device misses this."""


class Lapse(enum.StrEnum):
    """Why a device's presence ended."""

    SILENT = "silent"
    """No heartbeat for ``SILENT_PERIODS`` periods, with its task stream open."""
    GONE = "gone"
    """Its task stream closed, and no heartbeat for ``GONE_PERIODS`` periods."""
    EXPIRED = "expired"
    """Its session expired and was not renewed in time."""


@dataclass
class _Watch:
    session: Session
    streaming: bool
    generation: int


class Presence:
    """The watched sessions, one per node, and the heap of when each one's time is up.

    Not thread-safe: the edge server's event loop is its only user.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._watched: dict[int, _Watch] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._generations = itertools.count()

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, session: Session, *, streaming: bool) -> None:
        """Watch ``session`` (replacing what its node had) from now on."""
        session.last_seen = max(session.last_seen, self._clock())
        watch = _Watch(session, streaming, next(self._generations))
        self._watched[session.node_id] = watch
        self._file(watch)

    def closed(self, node_id: int) -> None:
        """The node's task stream closed: it now has ``GONE_PERIODS`` to show it is alive."""
        watch = self._watched.get(node_id)
        if watch is not None and watch.streaming:
            watch.streaming = False
            watch.generation = next(self._generations)
            self._file(watch)

    def forget(self, node_id: int) -> None:
        """Stop watching ``node_id`` (revoked, or joined afresh under a new session)."""
        self._watched.pop(node_id, None)

    def watched(self, node_id: int) -> Session | None:
        """The session watched for ``node_id``, if any."""
        watch = self._watched.get(node_id)
        return watch.session if watch is not None else None

    def due(self) -> list[tuple[Session, Lapse]]:
        """The sessions whose time is up now, each with why; they are no longer watched."""
        now = self._clock()
        lapsed: list[tuple[Session, Lapse]] = []
        while self._heap and self._heap[0][0] <= now:
            _, node_id, generation = heapq.heappop(self._heap)
            watch = self._watched.get(node_id)
            if watch is None or watch.generation != generation:
                continue  # an entry left behind by a later watch or a closed stream
            when, lapse = self._deadline(watch)
            if when > now:
                heapq.heappush(self._heap, (when, node_id, generation))
                continue
            del self._watched[node_id]
            lapsed.append((watch.session, lapse))
        return lapsed

    def _file(self, watch: _Watch) -> None:
        when, _ = self._deadline(watch)
        heapq.heappush(self._heap, (when, watch.session.node_id, watch.generation))

    @staticmethod
    def _deadline(watch: _Watch) -> tuple[float, Lapse]:
        session = watch.session
        period = session.heartbeat_seconds
        silence = (SILENT_PERIODS if watch.streaming else GONE_PERIODS) * period
        heard = (session.last_seen + silence, Lapse.SILENT if watch.streaming else Lapse.GONE)
        renewal = (session.expires + RENEWAL_GRACE_PERIODS * period, Lapse.EXPIRED)
        return min(heard, renewal)
