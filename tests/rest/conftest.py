"""A real ProjectVM HTTP server (local driver) with four agents, and clients for both surfaces.

``alice`` creates the projects (their admin); ``bob`` is made read_write and ``carol``
read_only where a test needs them; ``dave`` is a stranger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import issue_token
from tests.servers import http_server

AGENTS = ("alice", "bob", "carol", "dave")


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:PORT
    tokens: dict[str, str]

    @property
    def mcp_url(self) -> str:
        return self.base + "/mcp"

    def ws_url(self, project_id: str) -> str:
        return self.base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"

    def rest(self, agent: str | None) -> httpx.AsyncClient:
        """An HTTP client for ``/api/v1`` acting as ``agent`` (``None``: no token at all)."""
        headers = {"Authorization": f"Bearer {self.tokens[agent]}"} if agent else {}
        return httpx.AsyncClient(base_url=self.base + "/api/v1", headers=headers, timeout=60)


async def make_tokens(config: ServerConfig) -> dict[str, str]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(config.db_path) as store:
        return {name: await issue_token(store, name) for name in AGENTS}


@pytest.fixture
async def server(local_config: ServerConfig) -> AsyncIterator[Server]:
    tokens = await make_tokens(local_config)
    async with http_server(local_config) as url:
        yield Server(url.removesuffix("/mcp"), tokens)


@pytest.fixture
async def alice_rest(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.rest("alice") as client:
        yield client


MakeProject = Callable[..., Awaitable[str]]


@pytest.fixture
async def rest_projects(alice_rest: httpx.AsyncClient) -> AsyncIterator[MakeProject]:
    """``await make(name, members={"bob": "read_write"}, **settings)`` creates a project as
    alice over REST; all are deleted after the test."""
    made: list[str] = []

    async def make(name: str, members: dict[str, str] | None = None, **settings: object) -> str:
        response = await alice_rest.post("/projects", json={"name": name, "settings": settings})
        assert response.status_code == 201, response.text
        project_id = str(response.json()["project_id"])
        made.append(project_id)
        for agent, level in (members or {}).items():
            assigned = await alice_rest.put(
                f"/projects/{project_id}/members/{agent}", json={"access_level": level}
            )
            assert assigned.status_code == 200, assigned.text
        return project_id

    try:
        yield make
    finally:
        for project_id in made:
            await alice_rest.delete(f"/projects/{project_id}")
