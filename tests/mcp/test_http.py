"""Streamable HTTP: bearer tokens per agent, isolation between agents, Host checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import call, call_error, issue_token
from tests.servers import http_client, http_server, raw_http

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def tokens(local_config: ServerConfig) -> dict[str, str]:
    local_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(local_config.db_path) as store:
        return {name: await issue_token(store, name) for name in ("alice", "bob")}


@pytest.fixture
async def url(local_config: ServerConfig, tokens: dict[str, str]) -> AsyncIterator[str]:
    async with http_server(local_config) as found:
        yield found


async def test_requests_without_a_valid_token_get_401(url: str, tokens: dict[str, str]) -> None:
    async with raw_http() as http:
        missing = await http.post(url, json=INITIALIZE, headers=HEADERS)
        wrong = await http.post(
            url, json=INITIALIZE, headers={**HEADERS, "Authorization": "Bearer pvm_wrong"}
        )
        basic = await http.post(
            url, json=INITIALIZE, headers={**HEADERS, "Authorization": "Basic YWxpY2U6eA=="}
        )
        good = await http.post(
            url, json=INITIALIZE, headers={**HEADERS, "Authorization": f"Bearer {tokens['alice']}"}
        )
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "projectvm agents add" in response.json()["message"]
    assert good.status_code == 200


async def test_a_foreign_host_header_is_refused(url: str, tokens: dict[str, str]) -> None:
    async with raw_http() as http:
        response = await http.post(
            url,
            json=INITIALIZE,
            headers={
                **HEADERS,
                "Authorization": f"Bearer {tokens['alice']}",
                "Host": "evil.example.com",
            },
        )
    assert response.status_code == 421


async def test_health_needs_no_token(url: str) -> None:
    async with raw_http() as http:
        response = await http.get(url.replace("/mcp", "/healthz"))
    assert response.status_code == 200


async def test_agents_are_identified_by_token_and_isolated(
    url: str, tokens: dict[str, str]
) -> None:
    async with http_client(url, tokens["alice"]) as alice, http_client(url, tokens["bob"]) as bob:
        assert (await call(alice, "whoami"))["agent_id"] == "alice"
        assert (await call(bob, "whoami"))["agent_id"] == "bob"
        project = await call(alice, "create_project", name="alice's")
        project_id = project["project_id"]
        await call(alice, "write_file", project_id=project_id, path="secret.txt", content="s3")
        assert (await call(bob, "list_projects"))["projects"] == []
        for tool, arguments in (
            ("get_project", {}),
            ("read_file", {"path": "secret.txt"}),
            ("write_file", {"path": "x.txt", "content": "x"}),
            ("run_command", {"command": "cat secret.txt"}),
            ("list_files", {}),
            ("stop_project", {}),
            ("get_execution_history", {}),
        ):
            error = await call_error(bob, tool, project_id=project_id, **arguments)
            assert f"no project {project_id!r} is visible to agent 'bob'" in error
        gone = await call(bob, "delete_project", project_id=project_id)
        assert gone["deleted"] is False
        still = await call(alice, "read_file", project_id=project_id, path="secret.txt")
        assert still["content"] == "s3"
        ran = await call(alice, "run_command", project_id=project_id, command="echo ok")
        assert ran["stdout"] == "ok\n"
        history = await call(alice, "get_execution_history", project_id=project_id)
        assert [r["agent_id"] for r in history["executions"]] == ["alice"]
