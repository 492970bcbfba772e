"""How ``stamen agent`` ends: one exit status per reason, and the errors that carry them.

A supervisor (systemd, a shell loop, a test) reads the status; a person reads
the one line the agent prints before it exits. Statuses other than 0 mean the
agent will not get further by being restarted as it is: an operator has to act.

- 0 ``RUN_ENDED``: the run ended (the server said so), ``--max-tasks`` tasks were
  handled, or the agent was stopped (SIGTERM, Ctrl-C);
- 2 ``USAGE``: a bad option or a missing file (``--server``, ``ca.pem``, the device
  key, the dataset);
- 3 ``REFUSED``: a refusal no retry can fix: the device is not registered or was
  revoked, the server speaks another protocol version, its models are not signed by
  ``model-signing.pub``, or this device's data does not fit the server's model;
- 4 ``GAVE_UP``: ``--give-up-after`` seconds passed without reaching a server;
- 5 ``TLS``: the TLS handshake keeps failing for a reason that will not fix itself:
  a wrong CA, a name the certificate does not hold, or TLS on one side only.

Examples:
    >>> int(AgentExit.REFUSED), AgentRefused("revoked").exit_code
    (3, <AgentExit.REFUSED: 3>)
"""

from __future__ import annotations

import enum

from stamen.compression.wire import FLAT_NAME
from stamen.contract.edge import EdgeProtocolError
from stamen.core.errors import ShapeMismatch, StamenError
from stamen.protos.edge.v1 import edge_pb2


class AgentExit(enum.IntEnum):
    """The agent's exit statuses (documented in docs/edge.md, "Exit statuses")."""

    RUN_ENDED = 0
    USAGE = 2
    REFUSED = 3
    GAVE_UP = 4
    TLS = 5


class AgentStopped(StamenError):
    """The agent stops for good; ``str(error)`` is the one line that says what and the fix."""

    exit_code = AgentExit.USAGE


class AgentRefused(AgentStopped):
    """A refusal no retry can fix (unregistered or revoked key, protocol, model key, data)."""

    exit_code = AgentExit.REFUSED


class AgentGaveUp(AgentStopped):
    """``--give-up-after`` passed without a server."""

    exit_code = AgentExit.GAVE_UP


class TlsFailure(AgentStopped):
    """The TLS handshake keeps failing the same way; the message names the cause and the fix."""

    exit_code = AgentExit.TLS


REFUSAL_FIXES: dict[int, str] = {
    edge_pb2.ERROR_CODE_REVOKED_DEVICE: "the server's operator can register its key again",
    edge_pb2.ERROR_CODE_BAD_SIGNATURE: "the device key in --state-dir is not the one "
    "registered: register its device.pub",
}
"""What to do about each refusal no retry can fix, where the server's message does not say."""
PROTOCOL_FIX = "upgrade stamen on this device or on the server so that both speak it"


def refusal_line(error: EdgeProtocolError) -> str:
    """The one line for a refusal no retry can fix: the server's words and the fix."""
    fix = REFUSAL_FIXES.get(error.code)
    if error.code == edge_pb2.ERROR_CODE_BAD_REQUEST and "protocol version" in str(error):
        fix = PROTOCOL_FIX
    return f"the server refused this device: {error}" + (f"; {fix}" if fix else "")


def does_not_fit(error: ShapeMismatch) -> str:
    """A decoding error of the server's model, told from the server's side: the model the
    server sent is what this device got, and this device's data decides what it expected."""
    head = "this device's data does not fit the server's model"
    if error.tensor == FLAT_NAME and len(error.got) == len(error.expected) == 1:
        # A flat model (every tensor in one vector, as the edge preset sends): only the
        # sizes are known, not which tensor differs.
        return (
            f"{head}: it has {error.got[0]:,} parameters, and this device's data needs a "
            f"model of {error.expected[0]:,}"
        )
    return (
        f"{head}: tensor {error.tensor!r} is {error.got} in the server's model, and this "
        f"device's data needs {error.expected}"
    )
