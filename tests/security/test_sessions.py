"""MCP sessions over HTTP belong to the agent that opened them (issue 9, finding 6).

What is tested here happens in the HTTP surface, before any driver is involved, so it runs
once, on the ``process`` driver (usable everywhere), not once per driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import eventually, issue_token
from tests.security.raw_mcp import RawSession
from tests.servers import http_server, raw_http

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


async def test_another_agents_token_with_a_session_id_is_an_unknown_session(
    url: str, tokens: dict[str, str]
) -> None:
    async with raw_http() as http:
        alice = await RawSession.open(http, url, tokens["alice"])
        project_id = (await alice.call_tool("create_project", {"name": "bound"}))["project_id"]
        try:
            # alice's command waits for a line on stdin: it ends only when she says so.
            run = alice.request_message(
                "tools/call",
                {
                    "name": "run_command",
                    "arguments": {
                        "project_id": project_id,
                        "command": "read line; echo got $line",
                        "keep_stdin_open": True,
                    },
                },
            )
            async with alice.streaming(run) as response:
                assert response.status_code == 200
                running: dict[str, object] = {}

                async def command_runs() -> bool:
                    history = await alice.call_tool(
                        "get_execution_history", {"project_id": project_id, "status": "running"}
                    )
                    running.update(history["executions"][0] if history["executions"] else {})
                    return bool(running)

                await eventually(command_runs, what="alice's command running")

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
                    {"execution_id": running["execution_id"], "data": "hello\n", "eof": True},
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
