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
