"""What a member may still see and do once removed, or when the project forbids it; what a
stranger learns; settings and env values that are refused (issue 9, findings 14-19 and 22)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import mcp.types as types
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPDeprecationWarning

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import call, call_error, issue_token
from tests.servers import http_client, http_server

pytestmark = pytest.mark.anyio

Team = tuple[Client, Client, str]


@pytest.fixture
async def tokens(driver_config: ServerConfig) -> dict[str, str]:
    driver_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(driver_config.db_path) as store:
        return {name: await issue_token(store, name) for name in ("alice", "bob", "carol")}


@pytest.fixture
async def url(driver_config: ServerConfig, tokens: dict[str, str]) -> AsyncIterator[str]:
    async with http_server(driver_config) as found:
        yield found


@pytest.fixture
async def team(url: str, tokens: dict[str, str]) -> AsyncIterator[Team]:
    """alice's project with bob as a read_write member, over HTTP with their own tokens."""
    async with http_client(url, tokens["alice"]) as alice, http_client(url, tokens["bob"]) as bob:
        project_id = (await call(alice, "create_project", name="team"))["project_id"]
        await call(
            alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
        )
        try:
            yield alice, bob, project_id
        finally:
            await call(alice, "delete_project", project_id=project_id)


async def test_a_removed_member_stops_hearing_and_reading_at_once(
    team: Team, url: str, tokens: dict[str, str]
) -> None:
    alice, bob, project_id = team
    # A second project where bob stays a member. Its id sorts after the first one's, so its
    # update is published after any update of the first made before it (same publisher pass).
    other = (await call(alice, "create_project", name="still shared"))["project_id"]
    try:
        await call(
            alice, "assign_agent", project_id=other, agent_id="bob", access_level="read_only"
        )
        left, stays = sorted((project_id, other))
        if left != project_id:
            await call(
                alice, "assign_agent", project_id=left, agent_id="bob", access_level="read_write"
            )
        left_uri, stays_uri = f"project://{left}/events", f"project://{stays}/events"
        legacy_heard: list[str] = []
        heard_stays = anyio.Event()

        async def on_message(message: object) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                legacy_heard.append(str(message.params.uri))
                if str(message.params.uri) == stays_uri:
                    heard_stays.set()

        waiting = await call(
            alice,
            "run_command",
            project_id=left,
            command="echo before; read secret; echo after-$secret",
            keep_stdin_open=True,
            wait_s=0,
        )
        execution_id = waiting["execution_id"]
        with anyio.fail_after(60):
            seen = await call(bob, "read_command_output", execution_id=execution_id, wait_s=30)
            while "before" not in seen["stdout"]:
                seen = await call(bob, "read_command_output", execution_id=execution_id, wait_s=30)

        headers = {"Authorization": f"Bearer {tokens['bob']}"}
        outcome: dict[str, object] = {}
        async with (
            create_mcp_http_client(headers=headers) as http,
            Client(
                streamable_http_client(url, http_client=http),
                mode="legacy",
                message_handler=on_message,
            ) as bob_legacy,
            bob.listen(resource_subscriptions=[left_uri, stays_uri]) as listener,
        ):
            for uri in (left_uri, stays_uri):
                with pytest.warns(MCPDeprecationWarning):
                    await bob_legacy.subscribe_resource(uri)

            async def bob_waits_for_more() -> None:
                try:
                    outcome["result"] = await call(
                        bob,
                        "read_command_output",
                        execution_id=execution_id,
                        since=seen["next_since"],
                        wait_s=60,
                    )
                except AssertionError as err:
                    outcome["error"] = str(err)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as group:
                    group.start_soon(bob_waits_for_more)
                    await call(alice, "remove_agent", project_id=left, agent_id="bob")
                    await call(
                        alice, "send_input", execution_id=execution_id, data="s3cr3t\n", eof=True
                    )
                await call(alice, "write_file", project_id=left, path="after.txt", content="x")
                await call(alice, "write_file", project_id=stays, path="later.txt", content="y")
                async for update in listener:
                    # The first update bob hears is the project he still belongs to.
                    assert getattr(update, "uri", None) == stays_uri
                    break
                await heard_stays.wait()
        assert "result" not in outcome, outcome
        assert "was removed from project" in str(outcome["error"])
        assert "s3cr3t" not in str(outcome)
        # bob subscribed after the last event of the project he then left: he heard none of it.
        assert left_uri not in legacy_heard, legacy_heard
        error = await call_error(bob, "read_command_output", execution_id=execution_id)
        assert left not in error
    finally:
        await call(alice, "delete_project", project_id=other)


async def test_the_event_feed_is_refused_when_allowed_tools_exclude_get_events(
    team: Team,
) -> None:
    alice, bob, project_id = team
    await call(
        alice,
        "update_project_settings",
        project_id=project_id,
        settings={"allowed_tools": ["run_command", "read_file", "update_project_settings"]},
    )
    uri = f"project://{project_id}/events"
    error = await call_error(bob, "get_events", project_id=project_id)
    assert "does not permit the tool get_events" in error
    with pytest.raises(MCPError, match="does not permit the tool get_events"):
        await bob.read_resource(uri)

    async def listen() -> None:
        with anyio.fail_after(30):  # a listen that is let through waits for updates
            async with bob.listen(resource_subscriptions=[uri]) as listener:
                async for _ in listener:
                    break

    with pytest.raises(MCPError, match="cannot listen to"):
        await listen()


async def test_only_its_starter_or_an_admin_may_feed_or_cancel_a_command(team: Team) -> None:
    alice, bob, project_id = team
    started = await call(
        alice,
        "run_command",
        project_id=project_id,
        command="cat",
        keep_stdin_open=True,
        wait_s=0,
    )
    execution_id = started["execution_id"]
    for tool, extra in (("send_input", {"data": "forged\n"}), ("cancel_execution", {})):
        error = await call_error(bob, tool, execution_id=execution_id, **extra)
        assert "only alice or an admin of the project may" in error, (tool, error)
    await call(alice, "send_input", execution_id=execution_id, data="mine\n", eof=True)
    with anyio.fail_after(60):
        done = await call(alice, "read_command_output", execution_id=execution_id, wait_s=30)
        while not done["finished"]:
            done = await call(
                alice,
                "read_command_output",
                execution_id=execution_id,
                since=done["next_since"],
                wait_s=30,
            )
    history = await call(alice, "get_execution_history", project_id=project_id, include_output=True)
    [record] = [e for e in history["executions"] if e["execution_id"] == execution_id]
    assert record["output"] == "mine\n"


async def test_a_stranger_learns_nothing_about_a_foreign_execution(
    team: Team, url: str, tokens: dict[str, str]
) -> None:
    alice, _, project_id = team
    ran = await call(alice, "run_command", project_id=project_id, command="echo private")
    async with http_client(url, tokens["carol"]) as carol:
        for tool, extra in (
            ("read_command_output", {}),
            ("send_input", {"data": "x"}),
            ("cancel_execution", {}),
        ):
            error = await call_error(carol, tool, execution_id=ran["execution_id"], **extra)
            assert project_id not in error, (tool, error)
            assert "private" not in error
            missing = await call_error(carol, tool, execution_id="exe_0000000000000000", **extra)
            # A foreign id reads exactly like one that does not exist.
            assert error.replace(ran["execution_id"], "ID") == missing.replace(
                "exe_0000000000000000", "ID"
            )


async def test_settings_past_the_servers_ceilings_are_refused(team: Team) -> None:
    alice, _, project_id = team
    for settings, says in (
        ({"pids_limit": 2_000_000}, "pids_limit=2e+06 is more than this server allows"),
        ({"pids_limit": 4_000_000_000}, "pids_limit"),
        ({"max_concurrent_executions": 65}, "max_concurrent_executions"),
        ({"memory_mb": 10**9}, "memory_mb"),
        ({"max_storage_gb": 10**6}, "max_storage_gb"),
        ({"cpus": 10**4}, "cpus"),
        ({"auto_sleep_minutes": 1e-9}, "use 0 (never sleep) or at least 0.01 minutes"),
    ):
        error = await call_error(
            alice, "update_project_settings", project_id=project_id, settings=settings
        )
        assert says in error, (settings, error)
        error = await call_error(alice, "create_project", name="greedy", settings=settings)
        assert says in error, (settings, error)
    info = await call(alice, "get_project", project_id=project_id)
    assert info["settings"]["pids_limit"] is None
    assert info["settings"]["auto_sleep_minutes"] == 30


async def test_env_values_with_a_nul_are_refused_saying_why(team: Team) -> None:
    alice, _, project_id = team
    error = await call_error(
        alice, "run_command", project_id=project_id, command="true", env={"GOOD": "a\x00b"}
    )
    assert "the value of GOOD contains a NUL character" in error
    error = await call_error(
        alice,
        "update_project_settings",
        project_id=project_id,
        settings={"environment_variables": {"GOOD": "a\x00b"}},
    )
    assert "the value of GOOD contains a NUL character" in error
    error = await call_error(
        alice, "run_command", project_id=project_id, command="true", env={"9LIVES": "x"}
    )
    assert "'9LIVES' is not a valid environment variable name" in error
