"""The device registry: which public keys may join, and which were revoked.

A JSON file that ``stamen devices register/list/revoke`` edits and the edge
server re-reads whenever it changes, so a revocation takes effect at the
device's next join without a server restart.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stamen.contract.edge import generate_key, public_bytes
    >>> registry = DeviceRegistry(Path(tempfile.mkdtemp()) / "devices.json")
    >>> entry = registry.register(public_bytes(generate_key().public_key()), name="pi-1")
    >>> registry.status(entry.public_key).value
    'registered'
    >>> registry.revoke("pi-1").revoked
    True
"""

from __future__ import annotations

import base64
import enum
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stamen.contract.edge import device_id
from stamen.core import write_atomic
from stamen.core.errors import ConfigError


class DeviceStatus(enum.StrEnum):
    """What the registry says about a public key."""

    REGISTERED = "registered"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class DeviceEntry:
    """One registered device."""

    device_id: str
    name: str
    public_key_b64: str
    registered_unix: float
    revoked: bool = False

    @property
    def public_key(self) -> bytes:
        """The raw Ed25519 public key."""
        return base64.b64decode(self.public_key_b64)


RECHECK_SECONDS = 0.05
"""How long the file's stamp is trusted before it is read again: a revocation by another
process takes effect within this (a server asks several thousand times a second)."""
MAX_REMEMBERED_STATUSES = 1_000_000
"""At most this many keys' answers are remembered (unknown keys included: a flood of
made-up keys must not grow memory without bound)."""


class DeviceRegistry:
    """A JSON file of device entries, keyed by device id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache: dict[str, DeviceEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._statuses: dict[bytes, DeviceStatus] = {}
        """Answers of :meth:`status` for the file as last read: every upload and heartbeat
        asks, and a device's id is a hash of its key."""

    def entries(self) -> list[DeviceEntry]:
        """Every entry, registered or revoked, in registration order."""
        return sorted(self._load().values(), key=lambda e: (e.registered_unix, e.name))

    def status(self, public_key: bytes) -> DeviceStatus:
        """Whether ``public_key`` may join."""
        entries = self._load()
        known = self._statuses.get(public_key)
        if known is not None:
            return known
        entry = entries.get(device_id(public_key))
        if entry is None or entry.public_key != public_key:
            status = DeviceStatus.UNKNOWN
        else:
            status = DeviceStatus.REVOKED if entry.revoked else DeviceStatus.REGISTERED
        if len(self._statuses) < MAX_REMEMBERED_STATUSES:
            self._statuses[public_key] = status
        return status

    def register(self, public_key: bytes, *, name: str | None = None) -> DeviceEntry:
        """Admit ``public_key`` (again, if it was revoked)."""
        return self.register_many([(public_key, name)])[0]

    def register_many(self, keys: list[tuple[bytes, str | None]]) -> list[DeviceEntry]:
        """Admit each ``(public key, name)`` (again, if revoked), in one write of the file."""
        with self._lock:
            entries = dict(self._load())
            names = {e.name: e.device_id for e in entries.values()}
            added = []
            for public_key, name in keys:
                if len(public_key) != 32:
                    raise ConfigError("a device public key must be a 32-byte Ed25519 key")
                ident = device_id(public_key)
                label = name or ident[:12]
                if names.get(label, ident) != ident:
                    raise ConfigError(f"a different device is already registered as {label!r}")
                entry = DeviceEntry(
                    device_id=ident,
                    name=label,
                    public_key_b64=base64.b64encode(public_key).decode(),
                    registered_unix=time.time(),
                )
                entries[ident] = entry
                names[label] = ident
                added.append(entry)
            self._save(entries)
        return added

    def revoke(self, name_or_id: str) -> DeviceEntry:
        """Refuse a device from now on; it is matched by name or (a prefix of) its id."""
        with self._lock:
            entries = dict(self._load())
            entry = self.find(name_or_id, entries)
            revoked = DeviceEntry(**{**asdict(entry), "revoked": True})
            entries[entry.device_id] = revoked
            self._save(entries)
        return revoked

    def revision(self) -> tuple[int, int] | None:
        """A stamp that changes whenever the registry file does (``None``: no file yet)."""
        self._load()
        return self._stamp

    def find(self, name_or_id: str, entries: dict[str, DeviceEntry] | None = None) -> DeviceEntry:
        """The one entry whose name is ``name_or_id`` or whose id starts with it."""
        pool = entries if entries is not None else self._load()
        matches = [e for e in pool.values() if e.name == name_or_id]
        if not matches and len(name_or_id) >= 6:
            matches = [e for e in pool.values() if e.device_id.startswith(name_or_id.lower())]
        if len(matches) != 1:
            what = "no device" if not matches else f"{len(matches)} devices"
            raise ConfigError(f"{what} in {self.path} match {name_or_id!r}")
        return matches[0]

    def _load(self) -> dict[str, DeviceEntry]:
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < RECHECK_SECONDS:
            return self._cache
        self._checked = now
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._cache, self._stamp = {}, None
            self._statuses = {}
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return self._cache
        self._statuses = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            devices: list[dict[str, Any]] = raw["devices"]
            loaded = {d["device_id"]: DeviceEntry(**d) for d in devices}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"device registry {self.path} is malformed: {error}") from None
        self._cache, self._stamp = loaded, stamp
        return loaded

    def _save(self, entries: dict[str, DeviceEntry]) -> None:
        body = {"version": 1, "devices": [asdict(e) for e in entries.values()]}
        write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o644)
        self._stamp = None
