"""The security corpus runs on every real driver usable here (``driver_config``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.helpers import call


@pytest.fixture
async def owner(driver_config: ServerConfig) -> AsyncIterator[tuple[Client, ServerHandle, str]]:
    """alice, in-memory, with a fresh project on the driver under test (deleted afterwards)."""
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        project_id = (await call(client, "create_project", name="security"))["project_id"]
        try:
            yield client, handle, project_id
        finally:
            await call(client, "delete_project", project_id=project_id)


@pytest.fixture
async def owner_and_member(
    owner: tuple[Client, ServerHandle, str], driver_config: ServerConfig
) -> AsyncIterator[tuple[Client, Client, str, ServerHandle]]:
    """alice's project, and bob: a read_write member of it on the same server."""
    alice, handle, project_id = owner
    assert handle.state is not None
    await handle.state.service.agents.ensure("bob")
    await call(
        alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
    )
    second = build_server(driver_config, transport="memory", agent="bob")
    async with Client(second.mcp) as bob:
        yield alice, bob, project_id, handle
