"""Assembling a ProjectVM MCP server: store, drivers and service live in the server's lifespan."""

from __future__ import annotations

import getpass
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus

from server import __version__
from server.config import ServerConfig
from server.events import Publisher
from server.resources import register_resources
from server.service import ProjectService
from server.state import AppState
from server.store import Store
from server.tools import register_tools
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

__all__ = ["ServerHandle", "build_server", "default_user", "open_service"]

log = logging.getLogger("projectvm")

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


@asynccontextmanager
async def open_service(config: ServerConfig) -> AsyncIterator[ProjectService]:
    """Open the store and drivers of ``config`` and run a ``ProjectService`` over them."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.db_path)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        default_driver = await drivers.choose(config.driver)
        log.info(
            "ProjectVM %s: data in %s, driver %s", __version__, config.data_dir, default_driver
        )
        async with ProjectService(store, drivers, default_driver, config.limits) as service:
            yield service
    finally:
        await drivers.aclose()
        await store.aclose()


@dataclass
class ServerHandle:
    """The MCP server plus, while its lifespan runs, its state (for HTTP authentication)."""

    mcp: MCPServer
    config: ServerConfig
    state: AppState | None = field(default=None)


def build_server(
    config: ServerConfig,
    *,
    transport: Literal["stdio", "http", "memory"],
    agent: str | None,
) -> ServerHandle:
    """An MCP server whose tools act as ``agent`` (stdio, memory) or as each token's agent."""
    handle: ServerHandle

    bus = InMemorySubscriptionBus()
    publish: Publisher

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppState]:
        async with open_service(config) as service:
            if agent is not None:
                await service.ensure_agent(agent, user=default_user())
                await service.store.touch_agent(agent)
            service.events.add_publisher(publish)
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
    )
    register_tools(mcp)
    publish = register_resources(mcp, bus)
    handle = ServerHandle(mcp=mcp, config=config)
    return handle
