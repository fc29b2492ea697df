"""The security corpus runs on every real driver usable here (``driver_config``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.store import Store
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.helpers import call, issue_token
from tests.servers import http_client, http_server


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
    driver_config: ServerConfig,
) -> AsyncIterator[tuple[Client, Client, str]]:
    """alice's project, and bob: a read_write member of it, each with a token, over HTTP to
    one server (a VM's channel belongs to one server: a second one on the same data directory
    could not reach it)."""
    driver_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(driver_config.db_path) as store:
        tokens = {name: await issue_token(store, name) for name in ("alice", "bob")}
    async with (
        http_server(driver_config) as url,
        http_client(url, tokens["alice"]) as alice,
        http_client(url, tokens["bob"]) as bob,
    ):
        project_id = (await call(alice, "create_project", name="security"))["project_id"]
        try:
            await call(
                alice,
                "assign_agent",
                project_id=project_id,
                agent_id="bob",
                access_level="read_write",
            )
            yield alice, bob, project_id
        finally:
            await call(alice, "delete_project", project_id=project_id)
