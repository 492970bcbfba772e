"""Operator tokens for the monitor: who may watch, and who may also steer.

A token travels in the gRPC metadata ``authorization: Bearer <token>``
(:mod:`stamen.contract.monitor`). Each
token has a role: ``read-only`` tokens watch; ``operator`` tokens also pause,
resume, stop and change settings. Tokens come from options, the environment
(``STAMEN_MONITOR_OPERATOR_TOKEN``, ``STAMEN_MONITOR_READONLY_TOKEN``) or a file
with one ``<role> <token>`` pair a line (``#`` starts a comment).

Examples:
    >>> tokens = TokenStore({"s3cret-operator-token": Role.OPERATOR})
    >>> tokens.role_of("s3cret-operator-token")
    <Role.OPERATOR: 'operator'>
    >>> tokens.role_of("guess") is None
    True
    >>> parse_token_lines(["# role token", "read-only watch-only-token-123"])
    {'watch-only-token-123': <Role.READ_ONLY: 'read-only'>}
    >>> parse_token_lines(["readonly watch-only-token-123"])  # the env variable's spelling
    {'watch-only-token-123': <Role.READ_ONLY: 'read-only'>}
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stamen.core.errors import ConfigError

OPERATOR_ENV = "STAMEN_MONITOR_OPERATOR_TOKEN"
READ_ONLY_ENV = "STAMEN_MONITOR_READONLY_TOKEN"

MIN_TOKEN_LENGTH = 12


class Role(enum.StrEnum):
    """What a token may do."""

    READ_ONLY = "read-only"
    OPERATOR = "operator"


ROLE_SPELLINGS = {
    "read-only": Role.READ_ONLY,
    "readonly": Role.READ_ONLY,  # as in STAMEN_MONITOR_READONLY_TOKEN
    "read_only": Role.READ_ONLY,
    "operator": Role.OPERATOR,
}
"""How a token file may name each role: ``read-only`` as documented, and its other spellings."""


@dataclass(frozen=True)
class TokenStore:
    """The tokens a monitor accepts, each with its role."""

    tokens: Mapping[str, Role] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for token, role in self.tokens.items():
            check_token(token)
            if not isinstance(role, Role):
                raise ConfigError(f"token role must be one of read-only, operator; got {role!r}")

    def role_of(self, token: str | None) -> Role | None:
        """The role of ``token``, or ``None`` when it is not one of ours (constant-time compare)."""
        if not token:
            return None
        found = None
        for known, role in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = role
        return found

    def operator_tokens(self) -> list[str]:
        """The tokens that may use controls."""
        return [t for t, role in self.tokens.items() if role is Role.OPERATOR]


def check_token(token: str) -> None:
    """Raise a one-line :class:`ConfigError` for a token too short or with whitespace."""
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"a monitor token needs at least {MIN_TOKEN_LENGTH} characters and no spaces; "
            f"got one of {len(token)} characters"
        )


def generate_token() -> str:
    """A new random token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def parse_token_lines(lines: Iterable[str], source: str = "token file") -> dict[str, Role]:
    """``<role> <token>`` lines to a token map; a bad line is a one-line :class:`ConfigError`."""
    tokens: dict[str, Role] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        role = ROLE_SPELLINGS.get(parts[0].lower()) if parts else None
        if len(parts) != 2 or role is None:
            raise ConfigError(
                f"{source} line {number}: expected '<role> <token>' with role read-only or "
                f"operator; got {parts[0] if parts else line!r}"
            )
        check_token(parts[1])
        tokens[parts[1]] = role
    return tokens


def load_tokens(
    *,
    operator: Iterable[str] = (),
    read_only: Iterable[str] = (),
    token_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> TokenStore:
    """Collect tokens from options, a file and the environment (all of them count)."""
    env = os.environ if env is None else env
    tokens: dict[str, Role] = {}
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read token file {token_file}: {error.strerror}") from None
        tokens.update(parse_token_lines(text.splitlines(), str(token_file)))
    for token in [*read_only, *filter(None, [env.get(READ_ONLY_ENV)])]:
        check_token(token)
        tokens[token] = Role.READ_ONLY
    for token in [*operator, *filter(None, [env.get(OPERATOR_ENV)])]:
        check_token(token)
        tokens[token] = Role.OPERATOR
    return TokenStore(tokens)
