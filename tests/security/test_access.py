"""Who may do what: tokens, Host headers, other agents' projects, read-only members."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from mcp import MCPError

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
        "clientInfo": {"name": "probe", "version": "0"},
    },
}
JSON = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

# Arguments that would be valid for each mutating tool, were the caller allowed to use it.
MUTATIONS: dict[str, dict[str, object]] = {
    "write_file": {"path": "notes.md", "content": "changed"},
    "edit_file": {"path": "notes.md", "edits": [{"old_text": "original", "new_text": "x"}]},
    "delete_path": {"path": "notes.md"},
    "move_path": {"source": "notes.md", "destination": "moved.md"},
    "run_command": {"command": "echo changed > notes.md"},
    "send_input": {"execution_id": "EXECUTION", "data": "x"},
    "cancel_execution": {"execution_id": "EXECUTION"},
    "lock_path": {"path": "notes.md"},
    "unlock_path": {"path": "notes.md"},
    "start_project": {},
    "stop_project": {},
    "delete_project": {},
    "assign_agent": {"agent_id": "carol", "access_level": "admin"},
    "remove_agent": {"agent_id": "alice"},
    "update_project_settings": {"settings": {"auto_sleep_minutes": 1}},
    "open_terminal": {"command": "echo changed > notes.md"},
    "terminal_write": {"execution_id": "TERMINAL", "text": "echo changed > notes.md\n"},
    "resize_terminal": {"execution_id": "TERMINAL", "cols": 100, "rows": 30},
    "close_terminal": {"execution_id": "TERMINAL"},
}
NOT_PROJECT_MUTATIONS = {"create_project"}


@pytest.fixture
async def tokens(driver_config: ServerConfig) -> dict[str, str]:
    driver_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(driver_config.db_path) as store:
        return {name: await issue_token(store, name) for name in ("alice", "bob", "carol")}


@pytest.fixture
async def url(driver_config: ServerConfig, tokens: dict[str, str]) -> AsyncIterator[str]:
    async with http_server(driver_config) as found:
        yield found


async def test_http_needs_a_known_token_and_our_host_name(url: str, tokens: dict[str, str]) -> None:
    good = {**JSON, "Authorization": f"Bearer {tokens['alice']}"}
    async with raw_http() as http:
        assert (await http.post(url, json=INITIALIZE, headers=JSON)).status_code == 401
        wrong = {**JSON, "Authorization": "Bearer pvm_" + "x" * 43}
        assert (await http.post(url, json=INITIALIZE, headers=wrong)).status_code == 401
        empty = {**JSON, "Authorization": "Bearer"}
        assert (await http.post(url, json=INITIALIZE, headers=empty)).status_code == 401
        foreign = {**good, "Host": "attacker.example"}
        assert (await http.post(url, json=INITIALIZE, headers=foreign)).status_code == 421
        origin = {**good, "Origin": "http://attacker.example"}
        assert (await http.post(url, json=INITIALIZE, headers=origin)).status_code == 403
        assert (await http.post(url, json=INITIALIZE, headers=good)).status_code == 200


async def test_another_agents_project_is_invisible_and_untouchable(
    url: str, tokens: dict[str, str]
) -> None:
    async with http_client(url, tokens["alice"]) as alice, http_client(url, tokens["bob"]) as bob:
        project_id = (await call(alice, "create_project", name="private"))["project_id"]
        try:
            await call(alice, "write_file", project_id=project_id, path="secret", content="s")
            for tool, arguments in {**MUTATIONS, "read_file": {"path": "secret"}}.items():
                if "execution_id" in arguments:
                    continue
                if tool == "delete_project":  # idempotent: "nothing to delete" for strangers
                    gone = await call(bob, tool, project_id=project_id)
                    assert gone["deleted"] is False
                    continue
                error = await call_error(bob, tool, project_id=project_id, **arguments)
                assert "is visible to agent 'bob'" in error
            still = await call(alice, "read_file", project_id=project_id, path="secret")
            assert still["content"] == "s"
        finally:
            await call(alice, "delete_project", project_id=project_id)


async def test_a_read_only_member_is_refused_every_mutating_tool(
    url: str, tokens: dict[str, str]
) -> None:
    async with (
        http_client(url, tokens["alice"]) as alice,
        http_client(url, tokens["carol"]) as carol,
    ):
        listed = (await carol.list_tools()).tools
        mutating = {
            tool.name
            for tool in listed
            if tool.annotations is not None and tool.annotations.read_only_hint is False
        } - NOT_PROJECT_MUTATIONS
        assert mutating == set(MUTATIONS), "a new mutating tool needs a case here"
        project_id = (await call(alice, "create_project", name="shared"))["project_id"]
        try:
            await call(
                alice,
                "assign_agent",
                project_id=project_id,
                agent_id="carol",
                access_level="read_only",
            )
            await call(
                alice, "write_file", project_id=project_id, path="notes.md", content="original"
            )
            running = await call(
                alice,
                "run_command",
                project_id=project_id,
                command="sleep 60",
                wait_s=0,
                keep_stdin_open=True,
            )
            terminal = await call(alice, "open_terminal", project_id=project_id, command="cat")
            handles = {"EXECUTION": running["execution_id"], "TERMINAL": terminal["execution_id"]}
            for tool, arguments in MUTATIONS.items():
                if tool == "remove_agent":
                    arguments = {"agent_id": "alice"}
                resolved = {
                    key: handles.get(value, value) if isinstance(value, str) else value
                    for key, value in arguments.items()
                }
                scope = {} if "execution_id" in resolved else {"project_id": project_id}
                error = await call_error(carol, tool, **scope, **resolved)
                assert "has read_only access" in error, f"{tool}: {error}"
            after = await call(carol, "read_file", project_id=project_id, path="notes.md")
            assert after["content"] == "original"
            members = await call(carol, "list_members", project_id=project_id)
            assert {m["agent_id"]: m["access_level"] for m in members["members"]} == {
                "alice": "admin",
                "carol": "read_only",
            }
            await call(alice, "cancel_execution", execution_id=running["execution_id"])
            await call(alice, "close_terminal", execution_id=terminal["execution_id"])
        finally:
            await call(alice, "delete_project", project_id=project_id)


async def test_a_stranger_cannot_listen_to_another_projects_event_feed(
    url: str, tokens: dict[str, str]
) -> None:
    async with http_client(url, tokens["alice"]) as alice, http_client(url, tokens["bob"]) as bob:
        project_id = (await call(alice, "create_project", name="private feed"))["project_id"]
        try:
            uri = f"project://{project_id}/events"

            async def listen_as_bob() -> None:
                with anyio.fail_after(30):  # a listen that is let through waits for updates
                    async with bob.listen(resource_subscriptions=[uri]) as listener:
                        async for _ in listener:
                            break

            with pytest.raises(MCPError, match="cannot listen to"):
                await listen_as_bob()
            # A member may listen (and hears of a change).
            async with alice.listen(resource_subscriptions=[uri]) as listener:
                await call(alice, "write_file", project_id=project_id, path="x", content="x")
                with anyio.fail_after(30):
                    async for update in listener:
                        assert getattr(update, "uri", None) == uri
                        break
        finally:
            await call(alice, "delete_project", project_id=project_id)
