"""Who is calling over MCP: the agent of the HTTP request's token, or the session's agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver.exceptions import ToolError

from server.core.caller import Caller, ProgressReporter, no_progress
from server.core.service import ProjectService
from server.domain.operations import Operation

__all__ = ["AGENT_STATE_KEY", "AppState", "Transport", "caller_of", "identify"]

# Where the HTTP authentication middleware leaves the agent id in the request's state.
AGENT_STATE_KEY = "projectvm_agent"

Transport = Literal["stdio", "http", "memory"]


@dataclass
class AppState:
    service: ProjectService
    transport: Transport
    # The identity of every call over stdio or in memory; None over HTTP (tokens decide).
    default_agent: str | None


def identify(request_context: Any) -> tuple[AppState, str]:
    """The server state and the calling agent, from any request context (tool or handler)."""
    state: AppState = request_context.lifespan_context
    request = request_context.request
    if request is not None:
        agent = getattr(request.state, AGENT_STATE_KEY, None)
        if isinstance(agent, str):
            return state, agent
        raise ToolError("this request carries no agent identity; send Authorization: Bearer TOKEN")
    if state.default_agent is None:
        raise ToolError("no agent identity is configured for this transport")
    return state, state.default_agent


def caller_of(
    request_context: Any, operation: Operation, progress: ProgressReporter = no_progress
) -> tuple[AppState, Caller]:
    state, agent = identify(request_context)
    return state, Caller(agent, state.transport, operation, progress)
