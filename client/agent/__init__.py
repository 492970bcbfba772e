"""The ``stamen agent`` edge runtime: connection, sessions, reconnect, signed models and uploads,
resource guards."""

from stamen.client.agent.connection import Backoff, EdgeConnection, SessionInfo, open_channel
from stamen.client.agent.guards import GuardSettings, PowerState, power_state, skip_reason
from stamen.client.agent.runner import Agent, AgentRefused, AgentSettings
from stamen.client.agent.session import SessionKeeper
from stamen.client.agent.state import AgentState, AgentStateStore
from stamen.contract.edge import EdgeProtocolError

__all__ = [
    "Agent",
    "AgentRefused",
    "AgentSettings",
    "AgentState",
    "AgentStateStore",
    "Backoff",
    "EdgeConnection",
    "EdgeProtocolError",
    "GuardSettings",
    "PowerState",
    "SessionInfo",
    "SessionKeeper",
    "open_channel",
    "power_state",
    "skip_reason",
]
