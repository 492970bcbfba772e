"""The edge server's identity state: unanswered join challenges and open device sessions.

Both tables are bounded. A challenge exists only for a registered key, and
:class:`ChallengeBook` holds at most ``per_device_address`` of them for one key
at one address (a new one replaces that pair's oldest), ``per_device`` for one
key, and ``total`` in all; past a bound it refuses rather than evicts, so no
flood can push out another device's challenge. :class:`SessionTable` holds one
session per device: a fresh session ends the device's older one, and a
renewal re-keys the same session under a new token, so whatever was bound to
it (the task stream, the pending tasks) carries over.

Examples:
    >>> now = [0.0]
    >>> table = SessionTable(ttl=60.0, clock=lambda: now[0])
    >>> first, _ = table.open(7, "dev", b"k" * 32)
    >>> now[0] = 61.0
    >>> table.lookup(first.token).expired(now[0])
    True
    >>> old_token = first.token
    >>> renewed, was_renewal = table.open(7, "dev", b"k" * 32, renews=old_token)
    >>> renewed is first, was_renewal, table.lookup(old_token), renewed.expired(now[0])
    (True, True, None, False)
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from stamen.server.edge.limits import RateLimited


@dataclass
class Session:
    """One device's session; ``token`` and ``expires`` change when it is renewed."""

    token: str
    node_id: int
    device_id: str
    public_key: bytes
    expires: float
    last_seen: float
    renewals: int = 0
    heartbeat_seconds: float = 5.0
    """The heartbeat period this device was last told; its silence is measured in it."""

    def expired(self, now: float) -> bool:
        """Whether the session's time is up."""
        return now >= self.expires


class SessionTable:
    """Sessions by token, at most one per device (node id).

    An expired session stays in the table until its device authenticates again,
    so a late call with its token is told "expired" (renew) rather than
    "unknown" (start over). The table cannot grow past one entry per device
    that has ever proved its key.
    """

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_token: dict[str, Session] = {}
        self._by_node: dict[int, Session] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def open(
        self, node_id: int, device_id: str, public_key: bytes, renews: str = ""
    ) -> tuple[Session, bool]:
        """A session for a device that just proved its key, and whether it renewed the one
        ``renews`` names (its token, expired or not) rather than starting afresh."""
        now = self._clock()
        token = secrets.token_hex(24)
        old = self._by_node.get(node_id)
        if old is not None:
            del self._by_token[old.token]
        if old is not None and renews and old.token == renews:
            old.token, old.expires, old.last_seen = token, now + self.ttl, now
            old.renewals += 1
            self._by_token[token] = old
            return old, True
        # A fresh session: the older one (if any) is gone, and so is all it held.
        session = Session(token, node_id, device_id, public_key, now + self.ttl, now)
        self._by_token[token] = session
        self._by_node[node_id] = session
        return session, False

    def lookup(self, token: str) -> Session | None:
        """The session ``token`` names, expired or not; None when unknown or superseded."""
        return self._by_token.get(token)

    def for_node(self, node_id: int) -> Session | None:
        """The device's session, expired or not."""
        return self._by_node.get(node_id)

    def sessions(self) -> list[Session]:
        """Every device's session, expired or not."""
        return list(self._by_node.values())

    def is_current(self, session: Session) -> bool:
        """Whether ``session`` is still its device's session (renewals included)."""
        return self._by_node.get(session.node_id) is session


@dataclass(frozen=True)
class Challenge:
    """A nonce handed to a device at Join, waiting for its signature."""

    challenge_id: str
    device_id: str
    public_key: bytes
    nonce: bytes
    expires: float
    address: str


class ChallengeBook:
    """Unanswered challenges, bounded per key and address, per key, and in all."""

    def __init__(
        self,
        *,
        lifetime: float,
        per_device_address: int,
        per_device: int,
        total: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self.per_device_address = per_device_address
        self.per_device = per_device
        self.total = total
        self._clock = clock
        # Insertion order is expiry order: every challenge lives ``lifetime``.
        self._pending: OrderedDict[str, Challenge] = OrderedDict()
        self._by_device: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def pending_for(self, device_id: str) -> int:
        """Unanswered challenges of one key."""
        self._expire()
        return len(self._by_device.get(device_id, ()))

    def issue(self, device_id: str, public_key: bytes, address: str) -> Challenge:
        """A new challenge for ``device_id`` asked from ``address``; raises :class:`RateLimited`."""
        now = self._clock()
        self._expire(now)
        ids = self._by_device.get(device_id, [])
        same_address = [i for i in ids if self._pending[i].address == address]
        if len(same_address) >= self.per_device_address:
            # Only this key at this address loses a challenge: its own oldest.
            self._remove(same_address[0])
        elif len(ids) >= self.per_device:
            wait = self._pending[ids[0]].expires - now
            raise RateLimited(
                f"device {device_id[:12]} has {len(ids)} unanswered challenges; "
                f"answer one or retry in {wait:.1f} s",
                wait,
            )
        elif len(self._pending) >= self.total:
            wait = next(iter(self._pending.values())).expires - now
            raise RateLimited(
                f"the server holds {len(self._pending)} unanswered challenges; "
                f"retry in {wait:.1f} s",
                wait,
            )
        challenge = Challenge(
            challenge_id=secrets.token_hex(16),
            device_id=device_id,
            public_key=public_key,
            nonce=secrets.token_bytes(32),
            expires=now + self.lifetime,
            address=address,
        )
        self._pending[challenge.challenge_id] = challenge
        self._by_device.setdefault(device_id, []).append(challenge.challenge_id)
        return challenge

    def take(self, challenge_id: str) -> Challenge | None:
        """Remove and return a challenge that has not expired (each is answered once)."""
        self._expire()
        challenge = self._pending.get(challenge_id)
        if challenge is not None:
            self._remove(challenge_id)
        return challenge

    def _expire(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.expires > now:
                break
            self._remove(oldest.challenge_id)

    def _remove(self, challenge_id: str) -> None:
        challenge = self._pending.pop(challenge_id)
        ids = self._by_device[challenge.device_id]
        ids.remove(challenge_id)
        if not ids:
            del self._by_device[challenge.device_id]
