"""The devices on the edge server's task streams: who is connected, who is still there, who is out.

:class:`Roster` holds each open task stream (its session, its inbox on the
event loop, the grid's link to it) and the presence of every device that has
had one (:mod:`stamen.server.edge.presence`). One periodic :meth:`Roster.sweep`
keeps it true, at a cost that does not grow with idle devices:

- a device whose presence lapsed (silent, gone, or an expired session it did
  not renew) has its pending tasks released as dropouts (``vanished``) and its
  stream closed;
- when the registry file has changed, a device it no longer admits is cut off:
  its pending tasks are cancelled (``revoked``), and its stream ends with
  ``ERROR_CODE_REVOKED_DEVICE``, so the agent hears why.

It also sets the heartbeat period devices are told, longer as the fleet grows.
Everything here runs on the edge server's event loop, its only user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from stamen.server.edge.grid import EdgeGrid
from stamen.server.edge.presence import Lapse, Presence
from stamen.server.edge.refusal import Refusal, refused_device
from stamen.server.edge.registry import DeviceRegistry, DeviceStatus
from stamen.server.edge.sessions import Session
from stamen.server.edge.tasks_in_flight import NodeLink, StreamItem

LOG = logging.getLogger("stamen.server.edge")


@dataclass
class Stream:
    """An open task stream: its session, its inbox on the loop, and the grid's link."""

    session: Session
    inbox: asyncio.Queue[StreamItem | Refusal]
    link: NodeLink


class Roster:
    """Open task streams and device presence, for one grid and one registry.

    Args:
        grid: where a stream's tasks come from and a lost device's tasks are released.
        registry: re-read when its file changes; who it no longer admits is cut off.
        heartbeat_seconds: the shortest heartbeat period devices are told.
        max_heartbeats_per_second: the period grows with the fleet to stay below this.
        expired: the refusal a stream ends with when its session expired unrenewed.
    """

    def __init__(
        self,
        grid: EdgeGrid,
        registry: DeviceRegistry,
        *,
        heartbeat_seconds: float,
        max_heartbeats_per_second: float,
        expired: Refusal,
    ) -> None:
        self.grid = grid
        self.registry = registry
        self.heartbeat_seconds = heartbeat_seconds
        self.max_heartbeats_per_second = max_heartbeats_per_second
        self._expired = expired
        self._presence = Presence()
        self._streams: dict[int, Stream] = {}
        self._registry_revision = registry.revision()
        self.lapsed = 0
        """Devices whose presence ended (silent, gone or not renewed)."""

    def heartbeat_period(self) -> float:
        """The period devices are told: longer as the fleet grows, to cap the heartbeat rate."""
        return max(self.heartbeat_seconds, len(self._streams) / self.max_heartbeats_per_second)

    def attach(self, session: Session) -> Stream:
        """Open ``session``'s device's task stream (closing an older one of the same device)."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[StreamItem | Refusal] = asyncio.Queue()
        link = self.grid.connect(
            session.node_id, session.device_id, inbox.put_nowait, loop.call_soon_threadsafe
        )
        stream = Stream(session, inbox, link)
        self._streams[session.node_id] = stream
        self._presence.watch(session, streaming=True)
        return stream

    def detach(self, stream: Stream) -> None:
        """The stream closed: the grid forgets it; the device's presence runs on without it."""
        node = stream.session.node_id
        self.grid.disconnect(stream.link)
        if self._streams.get(node) is stream:
            del self._streams[node]
            self._presence.closed(node)

    def rejoined(self, session: Session) -> None:
        """A device started a fresh session: its presence (and so its pending tasks) is
        now measured by the new one."""
        if self._presence.watched(session.node_id) is not None:
            self._presence.watch(session, streaming=session.node_id in self._streams)

    def sweep(self, sessions: list[Session]) -> None:
        """Cut off whom the registry no longer admits, and release the lapsed devices."""
        revision = self.registry.revision()
        if revision != self._registry_revision:
            self._registry_revision = revision
            for session in sessions:
                status = self.registry.status(session.public_key)
                if status is not DeviceStatus.REGISTERED:
                    self.cut_off(session, status)
        for session, lapse in self._presence.due():
            self._lapse(session, lapse)

    def cut_off(self, session: Session, status: DeviceStatus) -> None:
        """End a device the registry no longer admits: release its tasks, end its stream."""
        node = session.node_id
        stream = self._streams.get(node)
        if stream is None and self._presence.watched(node) is None:
            return  # already cut off, or never connected
        self._presence.forget(node)
        released = self.grid.release(
            node, "revoked", f"device {session.device_id[:12]} was {status.value}"
        )
        LOG.warning(
            "device %s is %s: cut off (%d task(s) cancelled)",
            session.device_id[:12],
            status.value,
            released,
        )
        if stream is not None:
            stream.inbox.put_nowait(refused_device(session.device_id, status))

    def _lapse(self, session: Session, lapse: Lapse) -> None:
        node = session.node_id
        self.lapsed += 1
        silence = time.time() - session.last_seen
        why = {
            Lapse.SILENT: f"no heartbeat for {silence:.0f} s",
            Lapse.GONE: f"its task stream closed and no heartbeat for {silence:.0f} s",
            Lapse.EXPIRED: "its session expired and was not renewed",
        }[lapse]
        LOG.warning("node %d is gone: %s", node, why)
        self.grid.release(node, "vanished", f"node {node} is gone: {why}")
        stream = self._streams.get(node)
        if stream is not None:
            stream.inbox.put_nowait(self._expired if lapse is Lapse.EXPIRED else None)
