"""Assembling a ProjectVM MCP server: the service lives in the server's lifespan."""

from __future__ import annotations

import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from mcp.server.mcpserver import MCPServer

from server import __version__
from server.core.hub import Publisher
from server.core.service import open_service
from server.domain.config import ServerConfig
from server.surfaces.mcp.identity import AppState, Transport
from server.surfaces.mcp.middleware import listen_guard
from server.surfaces.mcp.request_ids import unique_request_ids
from server.surfaces.mcp.resources import CheckedSubscriptionBus, register_resources
from server.surfaces.mcp.tools import register_tools

__all__ = ["ServerHandle", "build_server", "default_user"]

INSTRUCTIONS = """\
ProjectVM gives you and other agents a shared, isolated, persistent VM per project.
Start with list_projects or create_project; every other tool takes the project_id.
Files live under /workspace in the VM and persist across stop/start. run_command runs a shell
command and returns exit_code, stdout and stderr (a non-zero exit is a normal result).
read_file returns a sha256: pass it as if_match to write_file/edit_file so you never overwrite
another agent's change unknowingly."""


def default_user() -> str:
    """The person running this server, as the owner of the agents it creates."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class ServerHandle:
    """The MCP server plus, while its lifespan runs, its state (for HTTP authentication)."""

    mcp: MCPServer
    config: ServerConfig
    state: AppState | None = field(default=None)


def build_server(config: ServerConfig, *, transport: Transport, agent: str | None) -> ServerHandle:
    """An MCP server whose tools act as ``agent`` (stdio, memory) or as each token's agent."""
    handle: ServerHandle
    bus = CheckedSubscriptionBus()
    publish: Publisher

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppState]:
        async with open_service(config) as service:
            if agent is not None:
                await service.agents.ensure(agent, user=default_user())
            service.hub.add_publisher(publish)
            handle.state = AppState(service=service, transport=transport, default_agent=agent)
            try:
                yield handle.state
            finally:
                handle.state = None

    mcp = MCPServer(
        name="projectvm",
        title="ProjectVM",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
        subscriptions=bus,
        middleware=[unique_request_ids, listen_guard],
    )
    register_tools(mcp)
    publish = register_resources(mcp, bus)
    handle = ServerHandle(mcp=mcp, config=config)
    return handle
