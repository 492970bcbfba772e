"""The console–monitor contract: how a client presents its token to the monitor service.

``stamen console`` and ``stamen status`` (``stamen.console``) send it; the
monitor (``stamen.server.monitor``) reads it. The messages themselves are in
``stamen.protos.monitor.v1``.

Examples:
    >>> token_from_metadata(bearer("s3cret-operator-token"))
    's3cret-operator-token'
    >>> token_from_metadata([("authorization", "Basic abc")]) is None
    True
"""

from __future__ import annotations

from collections.abc import Iterable

METADATA_KEY = "authorization"
"""The gRPC metadata key that carries the token (lower case, as gRPC requires)."""


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that presents ``token``."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The bearer token in a call's metadata, if any."""
    for key, value in metadata:
        if key == METADATA_KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
