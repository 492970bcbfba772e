"""The one-line checks every settings class uses to reject a bad value."""

from __future__ import annotations

import enum

from stamen.core.errors import ConfigError


def require(condition: bool, key: str, expected: str, value: object) -> None:
    """Raise a one-line :class:`ConfigError` unless ``condition`` holds.

    Examples:
        >>> require(3 >= 1, "federation.rounds", ">= 1", 3)
        >>> require(0 >= 1, "federation.rounds", ">= 1", 0)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: federation.rounds must be >= 1; got 0
    """
    if not condition:
        raise ConfigError(f"{key} must be {expected}; got {value!r}")


def require_member(settings: object, field: str, choices: type[enum.Enum], key: str) -> None:
    """Turn ``settings.field`` into a member of the ``str`` enum ``choices``, in place.

    A frozen settings class calls it from ``__post_init__``, so a plain string (as Python
    callers pass it) becomes the member that identity checks such as ``kind is
    AttackKind.NONE`` expect; anything else is a one-line :class:`ConfigError` naming
    ``key`` and the allowed values, worded as the TOML loader words it.
    """
    value = getattr(settings, field)
    if isinstance(value, choices):
        return
    try:
        member = choices(value)
    except ValueError:
        allowed = ", ".join(str(choice.value) for choice in choices)
        raise ConfigError(f"{key} must be one of {allowed}; got {value!r}") from None
    object.__setattr__(settings, field, member)


def is_host_port(address: str) -> bool:
    """Whether ``address`` is ``host:port``, optionally after a ``scheme://``.

    Examples:
        >>> is_host_port("10.0.0.1:6379"), is_host_port("ray://[::1]:10001")
        (True, True)
        >>> is_host_port("10.0.0.1"), is_host_port(":6379"), is_host_port("h:99999")
        (False, False, False)
    """
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
