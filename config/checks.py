"""The one-line check every settings class uses to reject a bad value."""

from __future__ import annotations

from stamen.core.errors import ConfigError


def require(condition: bool, key: str, expected: str, value: object) -> None:
    """Raise a one-line :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key} must be {expected}; got {value!r}")
