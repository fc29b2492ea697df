"""What the MCP server holds for its lifetime, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from server.service import ProjectService

__all__ = ["AGENT_STATE_KEY", "AppState", "caller", "identify"]

# Where the HTTP authentication middleware leaves the agent id in the request's state.
AGENT_STATE_KEY = "projectvm_agent"


@dataclass
class AppState:
    service: ProjectService
    transport: Literal["stdio", "http", "memory"]
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


def caller(ctx: Context[AppState, Any]) -> tuple[AppState, str]:
    """The server state and the id of the agent making this tool call."""
    return identify(ctx.request_context)
