"""Every MCP operation is reachable over REST, with the same result fields and the same access
decisions, for an admin, a read_write member, a read_only member and a stranger.

Two projects are set up alike, one driven over MCP (streamable HTTP) and one over REST; each
agent makes every operation's sample call on both, and the outcomes must be equal once ids and
timestamps are set aside: the same fields when it succeeds, the same refusal text (the REST
problem's ``detail`` is the MCP error's text) when it does not.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from mcp import Client

from server.core.service import ENDPOINTS
from server.domain.operations import Operation
from tests.helpers import call
from tests.rest.conftest import Server
from tests.rest.samples import samples
from tests.servers import http_client

pytestmark = pytest.mark.anyio

ROLES = {"dave": None, "carol": "read_only", "bob": "read_write", "alice": "admin"}
# These end the project: called last, after everything else.
LAST = [Operation.STOP_PROJECT, Operation.START_PROJECT, Operation.DELETE_PROJECT]
IDS = re.compile(r"\b(prj|exe)_[0-9a-f]{6,}\b")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")
VOLATILE = {"duration_ms", "queued_ms", "usage", "seq", "event_id", "last_event_id"}


def normalized(value: Any) -> Any:
    """Ids, timestamps and timings set aside; the transport's name is the one thing that
    differs by design (whoami says which surface you came through)."""
    if isinstance(value, dict):
        return {
            IDS.sub(r"<\1>", str(key)): normalized(item)
            for key, item in value.items()
            if key not in VOLATILE and not str(key).endswith("_at") and key != "transport"
        } | ({"next_cursor": value["next_cursor"] is not None} if "next_cursor" in value else {})
    if isinstance(value, list):
        return [normalized(item) for item in value]
    if isinstance(value, str):
        return TIMESTAMP.sub("<time>", IDS.sub(r"<\1>", value))
    return value


async def mcp_outcome(client: Client, operation: Operation, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(operation.value, arguments)
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        text = text.removeprefix(f"Error executing tool {operation.value}: ")  # the SDK's
        return ("refused", normalized(text))
    return ("ok", normalized(result.structured_content))


def rest_outcome(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return ("gone", None)
    if response.status_code >= 400:
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json", response.text
        assert problem["status"] == response.status_code
        return ("refused", normalized(problem["detail"]))
    return ("ok", normalized(response.json()))


def equivalent(operation: Operation, mcp: Any, rest: Any) -> bool:
    if mcp == rest:
        return True
    if rest[0] != "gone":
        return False
    # An idempotent DELETE of something already gone: MCP reports it (not found, or a result
    # saying nothing was removed); REST answers 204.
    if mcp[0] == "refused":
        return "not a member" in mcp[1] or "does not exist" in mcp[1]
    fields = mcp[1]
    return (
        fields.get("deleted") is False or fields.get("removed") is False or not fields.get("lock")
    )


@pytest.fixture
async def mcp_clients(server: Server) -> AsyncIterator[dict[str, Client]]:
    async with AsyncExitStack() as stack:
        yield {
            agent: await stack.enter_async_context(
                http_client(server.mcp_url, server.tokens[agent])
            )
            for agent in ROLES
        }


async def set_up(alice: Client, members: dict[str, str]) -> tuple[str, str]:
    project = await call(alice, "create_project", name="twin")
    project_id = project["project_id"]
    for agent, level in members.items():
        await call(alice, "assign_agent", project_id=project_id, agent_id=agent, access_level=level)
    await call(alice, "write_file", project_id=project_id, path="a.txt", content="a")
    ran = await call(alice, "run_command", project_id=project_id, command="echo a")
    return project_id, ran["execution_id"]


async def test_every_operation_answers_alike_over_mcp_and_rest_for_every_role(
    server: Server, mcp_clients: dict[str, Client]
) -> None:
    members = {agent: level for agent, level in ROLES.items() if level and agent != "alice"}
    alice = mcp_clients["alice"]
    mcp_project, mcp_execution = await set_up(alice, members)
    rest_project, rest_execution = await set_up(alice, members)
    on_mcp = samples(mcp_project, mcp_execution, terminal_command=None)
    on_rest = samples(rest_project, rest_execution, terminal_command=None)
    assert set(on_mcp) == set(ENDPOINTS), "every operation needs a sample call here"
    order = [op for op in ENDPOINTS if op not in LAST] + LAST
    made: list[str] = []
    compared = 0
    try:
        for agent in ROLES:
            async with server.rest(agent) as rest:
                for operation in order:
                    mcp = await mcp_outcome(mcp_clients[agent], operation, on_mcp[operation].mcp)
                    rest_result = rest_outcome(await on_rest[operation].send(rest))
                    if operation == Operation.CREATE_PROJECT and mcp[0] == "ok":
                        made += await _created_by(mcp_clients[agent], "made")
                    assert equivalent(operation, mcp, rest_result), (
                        f"{agent} / {operation}:\n  MCP:  {mcp}\n  REST: {rest_result}"
                    )
                    compared += 1
    finally:
        for project_id in {*made, mcp_project, rest_project}:
            await alice.call_tool("delete_project", {"project_id": project_id})
            for agent in ROLES:
                await mcp_clients[agent].call_tool("delete_project", {"project_id": project_id})
    assert compared == len(ROLES) * len(ENDPOINTS)


async def _created_by(client: Client, name: str) -> list[str]:
    listed = await call(client, "list_projects")
    return [p["project_id"] for p in listed["projects"] if p["name"] == name]
