"""The agent's session on one connection, renewed in place when the server says it expired.

A session expires on the server's clock. The agent does not count down to it:
when a call (an upload, a heartbeat, opening the task stream) comes back with
``ERROR_CODE_SESSION_EXPIRED``, :class:`SessionKeeper` authenticates again
with the device key, asking the server to *renew* the expired session, and
repeats the call once under the new token. The server carries the device's
task stream and pending tasks over to the renewed session, so a reply
computed while the session expired still counts for its round.

The heartbeat thread and the task loop share one keeper; whichever is told
first renews, and the other finds the session already renewed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from stamen.client.agent.connection import EdgeConnection, SessionInfo
from stamen.contract.edge import EdgeProtocolError
from stamen.protos.edge.v1 import edge_pb2

LOG = logging.getLogger("stamen.agent")

T = TypeVar("T")


def is_expired(error: EdgeProtocolError) -> bool:
    """Whether the server refused a call because the session expired (renew, then repeat)."""
    return error.code == edge_pb2.ERROR_CODE_SESSION_EXPIRED


class SessionKeeper:
    """The current session of one :class:`EdgeConnection`."""

    def __init__(self, connection: EdgeConnection, session: SessionInfo) -> None:
        self.connection = connection
        self._current = session
        self._lock = threading.Lock()
        self.renewals = 0

    @property
    def current(self) -> SessionInfo:
        """The session to use for the next call."""
        with self._lock:
            return self._current

    def renew(self, stale: SessionInfo) -> SessionInfo:
        """Renew ``stale`` (the session a call was refused under), unless already done."""
        with self._lock:
            if self._current.token != stale.token:
                return self._current
            fresh = self.connection.join(renews=stale.token)
            self._current = fresh
            self.renewals += 1
        LOG.info("session expired; renewed it (node %d)", fresh.node_id)
        return fresh

    def call(self, method: Callable[[SessionInfo], T]) -> T:
        """``method(session)``, renewing the session and repeating once if it had expired."""
        session = self.current
        try:
            return method(session)
        except EdgeProtocolError as error:
            if not is_expired(error):
                raise
        return method(self.renew(session))
