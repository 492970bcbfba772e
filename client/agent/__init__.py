"""The ``stamen agent`` edge runtime: connection, sessions, reconnect, signed models and uploads,
resource guards."""

from stamen.client.agent.connection import Backoff, EdgeConnection, SessionInfo, open_channel
from stamen.client.agent.exits import (
    AgentExit,
    AgentGaveUp,
    AgentRefused,
    AgentStopped,
    TlsFailure,
)
from stamen.client.agent.guards import GuardSettings, PowerState, power_state, skip_reason
from stamen.client.agent.runner import Agent, AgentSettings
from stamen.client.agent.session import SessionKeeper
from stamen.client.agent.state import AgentState, AgentStateStore
from stamen.contract.edge import EdgeProtocolError

__all__ = [
    "Agent",
    "AgentExit",
    "AgentGaveUp",
    "AgentRefused",
    "AgentSettings",
    "AgentState",
    "AgentStateStore",
    "AgentStopped",
    "Backoff",
    "EdgeConnection",
    "EdgeProtocolError",
    "GuardSettings",
    "PowerState",
    "SessionInfo",
    "SessionKeeper",
    "TlsFailure",
    "open_channel",
    "power_state",
    "skip_reason",
]
