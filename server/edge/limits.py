"""Rate limits for ``Join``: token buckets per device key and per peer address, in bounded tables.

``Join`` is the one call anyone may make (a device's public key is public), so
it is where a flood lands. :class:`JoinLimiter` charges each ``Join`` to
whoever it can be pinned on:

- a ``Join`` naming a **registered** key is charged to that key *at that
  address* (``per_device``), then to the address (``per_address``, generous,
  for fleets behind one NAT);
- a ``Join`` the registry refuses (unknown, revoked or malformed key) is
  charged to the address alone (``per_refused_address``, strict); it is where
  floods of made-up keys end, and it bounds the log lines they cause.

So a flood from one address, whatever keys it names, spends only that
address's buckets and the buckets of those keys at that address: a device
joining from elsewhere is never throttled by it, and neither is a device on
the same address, unless the flood names that device's own key. Every table
holds at most ``table_size`` buckets and drops the least recently used one
first: a dropped bucket comes back full, so memory is bounded and the worst an
attacker churning the table achieves is a fresh bucket for an idle peer.

Examples:
    >>> clock = iter([0.0, 0.0, 0.0, 6.0]).__next__
    >>> buckets = TokenBuckets(RateLimit(burst=2, per_minute=10), capacity=100, clock=clock)
    >>> [buckets.take("a"), buckets.take("a"), buckets.take("a")]
    [0.0, 0.0, 6.0]
    >>> buckets.take("a")  # one token back after 6 s
    0.0
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from stamen.config import require


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` calls at once, then ``per_minute`` a minute."""

    burst: int
    per_minute: float

    def __post_init__(self) -> None:
        require(self.burst >= 1, "rate limit burst", ">= 1", self.burst)
        require(self.per_minute > 0, "rate limit per minute", "> 0", self.per_minute)

    def describe(self) -> str:
        """``10 at once, then 10 a minute``."""
        return f"{self.burst} at once, then {self.per_minute:g} a minute"


@dataclass(frozen=True)
class JoinLimits:
    """How many ``Join`` calls and unanswered challenges the edge server allows."""

    per_device: RateLimit = field(default_factory=lambda: RateLimit(burst=10, per_minute=10))
    """Joins naming one registered key from one address. A device joins once per
    connection and once per session renewal, so 10 a minute is far above its need."""
    per_address: RateLimit = field(default_factory=lambda: RateLimit(burst=1000, per_minute=1200))
    """Joins for registered keys from one address: generous, for a fleet behind one NAT
    that rejoins at once after a server restart."""
    per_refused_address: RateLimit = field(
        default_factory=lambda: RateLimit(burst=20, per_minute=60)
    )
    """Joins the registry refuses (unknown, revoked or malformed keys) from one address."""
    table_size: int = 10_000
    """Buckets each table keeps (least recently used dropped first)."""
    challenges_per_device_address: int = 2
    """Unanswered challenges of one key at one address; a new one replaces the oldest."""
    challenges_per_device: int = 16
    """Unanswered challenges of one key over all addresses; beyond it Join is refused."""
    challenges_total: int = 50_000
    """Unanswered challenges in all; beyond it Join is refused (nothing is evicted)."""

    def __post_init__(self) -> None:
        require(self.table_size >= 16, "join limiter table size", ">= 16", self.table_size)
        require(
            1 <= self.challenges_per_device_address <= self.challenges_per_device,
            "challenges per device and address",
            "1..challenges_per_device",
            self.challenges_per_device_address,
        )
        require(
            self.challenges_per_device <= self.challenges_total,
            "challenges per device",
            "<= challenges_total",
            self.challenges_per_device,
        )


class TokenBuckets:
    """Token buckets keyed by anything hashable, at most ``capacity`` of them (LRU)."""

    def __init__(
        self,
        limit: RateLimit,
        capacity: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.capacity = capacity
        self._clock = clock
        self._rate = limit.per_minute / 60.0
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Spend one token of ``key``'s bucket: 0.0 when granted, else the seconds until one."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - stamp) * self._rate)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self._rate


class RateLimited(Exception):
    """A Join refused by a limit: ``message`` says which, ``retry_after`` when to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JoinLimiter:
    """The three ``Join`` budgets of :class:`JoinLimits`, thread-unsafe (the servicer locks)."""

    def __init__(
        self, limits: JoinLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or JoinLimits()
        size = self.limits.table_size
        self.per_device = TokenBuckets(self.limits.per_device, size, clock=clock)
        self.per_address = TokenBuckets(self.limits.per_address, size, clock=clock)
        self.per_refused = TokenBuckets(self.limits.per_refused_address, size, clock=clock)

    def admit_registered(self, device: str, address: str) -> None:
        """Charge a Join for the registered key ``device`` from ``address``, or raise."""
        wait = self.per_device.take((device, address))
        if wait:
            raise RateLimited(
                f"too many Join requests for device {device[:12]} from {address} "
                f"({self.limits.per_device.describe()}); retry in {wait:.1f} s",
                wait,
            )
        wait = self.per_address.take(address)
        if wait:
            raise RateLimited(
                f"too many Join requests from {address} "
                f"({self.limits.per_address.describe()}); retry in {wait:.1f} s",
                wait,
            )

    def admit_refused(self, address: str) -> None:
        """Charge a Join the registry refuses to ``address``, or raise (then say nothing more)."""
        wait = self.per_refused.take(address)
        if wait:
            raise RateLimited(
                f"too many refused Join requests from {address} "
                f"({self.limits.per_refused_address.describe()}); retry in {wait:.1f} s",
                wait,
            )


def peer_address(peer: str) -> str:
    """The address a gRPC peer string is limited as: its IP, or its /64 for IPv6.

    Examples:
        >>> peer_address("ipv4:127.0.0.1:50123")
        '127.0.0.1'
        >>> peer_address("ipv6:[2001:db8::7]:443")
        '2001:db8::/64'
        >>> peer_address("unix:/tmp/edge.sock")
        'unix'
    """
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return kind or "unknown"
    if ip.version == 6 and not ip.is_loopback:
        # One host usually holds a whole /64: count it as one address.
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
