"""MCP sessions belong to the agent that opened them (issue 9, finding 6), and a request id
is in flight once at a time in a session (finding 21).

What is tested here happens in the MCP and HTTP surfaces, before any driver is involved, so it
runs once, on the ``process`` driver (usable everywhere), not once per driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import eventually, issue_token
from tests.security.raw_mcp import RawSession, RawStdio
from tests.servers import http_server, raw_http, server_argv

pytestmark = pytest.mark.anyio


@pytest.fixture
def process_config(data_dir: Path) -> ServerConfig:
    return ServerConfig.load(data_dir, driver="process")


@pytest.fixture
async def tokens(process_config: ServerConfig) -> dict[str, str]:
    process_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(process_config.db_path) as store:
        return {name: await issue_token(store, name) for name in ("alice", "bob")}


@pytest.fixture
async def url(process_config: ServerConfig, tokens: dict[str, str]) -> AsyncIterator[str]:
    async with http_server(process_config) as found:
        yield found


def waiting_command(project_id: str) -> dict[str, object]:
    """run_command arguments for a command that ends only when it reads a line on stdin."""
    return {
        "name": "run_command",
        "arguments": {
            "project_id": project_id,
            "command": "read line; echo got $line",
            "keep_stdin_open": True,
        },
    }


async def running_execution(session: RawSession, project_id: str) -> str:
    """The id of the project's running command, once it runs."""
    found: list[str] = []

    async def command_runs() -> bool:
        history = await session.call_tool(
            "get_execution_history", {"project_id": project_id, "status": "running"}
        )
        found.extend(execution["execution_id"] for execution in history["executions"])
        return bool(found)

    await eventually(command_runs, what="the command running")
    return found[0]


async def test_another_agents_token_with_a_session_id_is_an_unknown_session(
    url: str, tokens: dict[str, str]
) -> None:
    async with raw_http() as http:
        alice = await RawSession.open(http, url, tokens["alice"])
        project_id = (await alice.call_tool("create_project", {"name": "bound"}))["project_id"]
        try:
            run = alice.request_message("tools/call", waiting_command(project_id))
            async with alice.streaming(run) as response:
                assert response.status_code == 200
                execution_id = await running_execution(alice, project_id)

                # bob, with his own valid token, tries alice's session every way there is.
                cancel = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": run["id"], "reason": "bob says so"},
                }
                refused = await alice.post(cancel, token=tokens["bob"])
                assert refused.status_code == 404, refused.text
                assert refused.json()["error"]["message"] == "Session not found"
                listing = alice.request_message("tools/list", {})
                assert (await alice.post(listing, token=tokens["bob"])).status_code == 404
                # (a GET let through would be an endless stream of alice's notifications)
                async with http.stream(
                    "GET", url, headers=alice.headers(token=tokens["bob"])
                ) as listen:
                    assert listen.status_code == 404
                ended = await http.delete(url, headers=alice.headers(token=tokens["bob"]))
                assert ended.status_code == 404

                # alice's session and her command are untouched: she finishes it herself.
                await alice.call_tool(
                    "send_input",
                    {"execution_id": execution_id, "data": "hello\n", "eof": True},
                )
                with anyio.fail_after(30):
                    answer = await alice.answer(response, run["id"])
            assert "result" in answer, f"alice's call did not complete: {answer}"
            result = answer["result"]
            assert not result.get("isError"), result
            assert result["structuredContent"]["exit_code"] == 0
            assert result["structuredContent"]["stdout"] == "got hello\n"
        finally:
            await alice.call_tool("delete_project", {"project_id": project_id})


async def test_a_request_id_already_in_flight_is_refused_and_the_first_still_answered_over_http(
    url: str, tokens: dict[str, str]
) -> None:
    async with raw_http() as http:
        alice = await RawSession.open(http, url, tokens["alice"])
        project_id = (await alice.call_tool("create_project", {"name": "ids"}))["project_id"]
        try:
            run = alice.request_message("tools/call", waiting_command(project_id))
            async with alice.streaming(run) as response:
                assert response.status_code == 200
                execution_id = await running_execution(alice, project_id)
                again = alice.request_message(
                    "tools/call", {"name": "list_projects", "arguments": {}}, run["id"]
                )
                refused = await alice.post(again)
                assert refused.status_code == 400, refused.text
                error = refused.json()
                assert error["id"] == run["id"]
                assert error["error"]["code"] == -32600
                assert "already in flight" in error["error"]["message"]
                await alice.call_tool(
                    "send_input", {"execution_id": execution_id, "data": "hello\n", "eof": True}
                )
                with anyio.fail_after(30):
                    answer = await alice.answer(response, run["id"])
            assert "result" in answer, f"the first request was not answered: {answer}"
            assert answer["result"]["structuredContent"]["stdout"] == "got hello\n"
        finally:
            await alice.call_tool("delete_project", {"project_id": project_id})


async def test_a_request_id_already_in_flight_is_refused_and_the_first_still_answered_over_stdio(
    data_dir: Path,
) -> None:
    argv = server_argv(data_dir, "serve", "--driver", "process", "--agent", "alice")
    async with RawStdio.serve(argv) as server:
        ids = iter(range(10, 1000))

        async def call_tool(tool: str, **arguments: object) -> dict[str, object]:
            request_id = next(ids)
            params = {"name": tool, "arguments": arguments}
            await server.send(
                {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            )
            answer = await server.answer(request_id)
            assert not answer["result"].get("isError"), answer
            return dict(answer["result"]["structuredContent"])

        project_id = (await call_tool("create_project", name="ids"))["project_id"]
        try:
            run = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": waiting_command(str(project_id)),
            }
            await server.send(run)
            found: list[str] = []

            async def command_runs() -> bool:
                history = await call_tool(
                    "get_execution_history", project_id=project_id, status="running"
                )
                executions = history["executions"]
                assert isinstance(executions, list)
                found.extend(execution["execution_id"] for execution in executions)
                return bool(found)

            await eventually(command_runs, what="the command running")
            again = {**run, "params": {"name": "list_projects", "arguments": {}}}
            await server.send(again)
            refused = await server.answer(7)
            assert "error" in refused, f"the duplicate was served: {refused}"
            assert refused["error"]["code"] == -32600
            assert "already in flight" in refused["error"]["message"]
            await call_tool("send_input", execution_id=found[0], data="hello\n", eof=True)
            answer = await server.answer(7)
            assert "result" in answer, f"the first request was not answered: {answer}"
            assert answer["result"]["structuredContent"]["stdout"] == "got hello\n"
        finally:
            await call_tool("delete_project", project_id=project_id)
