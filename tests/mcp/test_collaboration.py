"""Several agents in one project over streamable HTTP, each with its own bearer token."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

from server.domain.config import ServerConfig
from server.store import Store
from tests.helpers import call, call_error, eventually, issue_token
from tests.servers import http_client, http_server

pytestmark = pytest.mark.anyio

AGENTS = ("alice", "bob", "carol", "dave")


@pytest.fixture
async def tokens(local_config: ServerConfig) -> dict[str, str]:
    local_config.data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(local_config.db_path) as store:
        return {name: await issue_token(store, name) for name in AGENTS}


@pytest.fixture
async def url(local_config: ServerConfig, tokens: dict[str, str]) -> AsyncIterator[str]:
    async with http_server(local_config) as found:
        yield found


@pytest.fixture
async def team(url: str, tokens: dict[str, str]) -> AsyncIterator[dict[str, Client]]:
    """alice (owner), bob (read_write), carol (read_only), dave (read_write), one project."""
    async with (
        http_client(url, tokens["alice"]) as alice,
        http_client(url, tokens["bob"]) as bob,
        http_client(url, tokens["carol"]) as carol,
        http_client(url, tokens["dave"]) as dave,
    ):
        yield {"alice": alice, "bob": bob, "carol": carol, "dave": dave}


async def shared_project(team: dict[str, Client]) -> str:
    alice = team["alice"]
    project_id = str((await call(alice, "create_project", name="team"))["project_id"])
    await call(
        alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
    )
    await call(
        alice, "assign_agent", project_id=project_id, agent_id="carol", access_level="read_only"
    )
    await call(
        alice, "assign_agent", project_id=project_id, agent_id="dave", access_level="read_write"
    )
    return project_id


async def test_levels_are_enforced_and_a_reader_can_follow_a_running_command(
    team: dict[str, Client],
) -> None:
    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    project_id = await shared_project(team)
    members = await call(carol, "list_members", project_id=project_id)
    assert {m["agent_id"]: m["access_level"] for m in members["members"]} == {
        "alice": "admin",
        "bob": "read_write",
        "carol": "read_only",
        "dave": "read_write",
    }
    await call(alice, "write_file", project_id=project_id, path="notes.md", content="# plan\n")

    for tool, arguments in (
        ("write_file", {"path": "x.txt", "content": "x"}),
        ("run_command", {"command": "true"}),
        ("edit_file", {"path": "notes.md", "edits": [{"old_text": "plan", "new_text": "p"}]}),
        ("delete_path", {"path": "notes.md"}),
        ("lock_path", {"path": "notes.md"}),
    ):
        error = await call_error(carol, tool, project_id=project_id, **arguments)
        assert "has read_only access" in error
        assert "needs read_write or higher" in error
    error = await call_error(
        bob, "assign_agent", project_id=project_id, agent_id="carol", access_level="admin"
    )
    assert "needs admin or higher" in error
    error = await call_error(bob, "stop_project", project_id=project_id)
    assert "needs admin" in error

    read = await call(carol, "read_file", project_id=project_id, path="notes.md")
    assert read["content"] == "# plan\n"

    started = await call(
        bob,
        "run_command",
        project_id=project_id,
        command="echo first; while [ ! -e go ]; do sleep 0.05; done; echo second",
        wait_s=0,
    )
    assert started["status"] in ("queued", "running")
    execution_id = started["execution_id"]
    seen = ""
    since = 0
    with anyio.fail_after(60):
        while "first" not in seen:
            chunk = await call(
                carol, "read_command_output", execution_id=execution_id, since=since, wait_s=10
            )
            seen += chunk["stdout"]
            since = chunk["next_since"]
        assert not chunk["finished"]
        await call(alice, "write_file", project_id=project_id, path="go", content="")
        while not chunk["finished"]:
            chunk = await call(
                carol, "read_command_output", execution_id=execution_id, since=since, wait_s=10
            )
            seen += chunk["stdout"]
            since = chunk["next_since"]
    assert seen == "first\nsecond\n"
    assert chunk["exit_code"] == 0
    error = await call_error(carol, "cancel_execution", execution_id=execution_id)
    assert "read_write" in error


async def test_concurrent_writes_with_the_same_if_match_have_exactly_one_winner(
    team: dict[str, Client],
) -> None:
    alice, bob = team["alice"], team["bob"]
    project_id = await shared_project(team)
    base = await call(
        alice, "write_file", project_id=project_id, path="shared.txt", content="base\n"
    )
    contents = {"alice": "A" * 200_000 + "\n", "bob": "B" * 200_000 + "\n"}
    outcomes: dict[str, types.CallToolResult] = {}

    async def write(name: str, client: Client) -> None:
        outcomes[name] = await client.call_tool(
            "write_file",
            {
                "project_id": project_id,
                "path": "shared.txt",
                "content": contents[name],
                "if_match": base["sha256"],
            },
        )

    async with anyio.create_task_group() as group:
        group.start_soon(write, "alice", alice)
        group.start_soon(write, "bob", bob)
    winners = [name for name, result in outcomes.items() if not result.is_error]
    losers = [name for name, result in outcomes.items() if result.is_error]
    assert len(winners) == 1
    assert len(losers) == 1
    [winner], [loser] = winners, losers
    message = outcomes[loser].content[0].text  # type: ignore[union-attr]
    assert "changed since you read it" in message
    assert f"last changed by {winner}" in message
    final = await call(team["carol"], "read_file", project_id=project_id, path="shared.txt")
    assert final["content"] == contents[winner]
    assert final["sha256"] in message


async def test_the_queue_caps_concurrency_fairly_and_every_run_is_recorded(
    team: dict[str, Client],
) -> None:
    project_id = await shared_project(team)
    await call(
        team["alice"],
        "update_project_settings",
        project_id=project_id,
        settings={"max_concurrent_executions": 2},
    )
    # Each command counts itself in under flock and records the count it saw, waits until the
    # test lets it go, then counts itself out: the peak is what ran at once.
    probe = (
        "flock .count.lock sh -c 'n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); "
        "echo $n > count; echo $n >> peaks'; "
        "while [ ! -e go ]; do sleep 0.01; done; "
        "flock .count.lock sh -c 'echo $(( $(cat count) - 1 )) > count'"
    )
    results: list[dict[str, object]] = []

    async def run(name: str) -> None:
        results.append(await call(team[name], "run_command", project_id=project_id, command=probe))

    runners = ["alice"] * 10 + ["bob"] * 6 + ["dave"] * 4
    async with anyio.create_task_group() as group:
        for name in runners:
            group.start_soon(run, name)

        async def all_waiting() -> bool:
            listing = await call(team["carol"], "list_executions", project_id=project_id)
            return (
                len(listing["executions"]) == 20
                and sum(1 for e in listing["executions"] if e["status"] == "queued") == 18
            )

        await eventually(all_waiting, what="two running and eighteen queued")
        queued = await call(team["carol"], "list_executions", project_id=project_id, state="queued")
        order = [
            e["agent_id"] for e in sorted(queued["executions"], key=lambda e: e["queue_position"])
        ]
        # Round-robin across agents: nobody's burst starves another's.
        assert len(set(order[:3])) == 3
        assert sorted(e["queue_position"] for e in queued["executions"]) == list(range(1, 19))
        await call(team["alice"], "write_file", project_id=project_id, path="go", content="")
    assert len(results) == 20
    assert all(r["exit_code"] == 0 and r["status"] == "completed" for r in results)
    peaks = await call(team["carol"], "read_file", project_id=project_id, path="peaks")
    assert max(int(n) for n in peaks["content"].split()) == 2
    history = await call(team["carol"], "get_execution_history", project_id=project_id, limit=100)
    counted = Counter(r["agent_id"] for r in history["executions"] if r["command"] == probe)
    assert counted == {"alice": 10, "bob": 6, "dave": 4}
    assert all(r["queued_ms"] is not None for r in history["executions"])


async def test_a_reader_receives_everyones_events_in_order_by_poll_and_by_resource(
    team: dict[str, Client], url: str, tokens: dict[str, str]
) -> None:
    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    project_id = await shared_project(team)
    start = (await call(carol, "get_events", project_id=project_id))["last_event_id"]
    uri = f"project://{project_id}/events"

    legacy_updates = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri == uri:
            legacy_updates.set()

    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {tokens['carol']}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(
            streamable_http_client(url, http_client=http), mode="legacy", message_handler=on_message
        ) as carol_legacy,
        carol.listen(resource_subscriptions=[uri]) as listener,
    ):
        with pytest.warns(MCPDeprecationWarning):
            await carol_legacy.subscribe_resource(uri)

        waiter = await call(carol, "get_events", project_id=project_id, since_id=start, wait_s=0)
        assert waiter["events"] == []
        await call(alice, "write_file", project_id=project_id, path="a.txt", content="from alice")
        await call(bob, "run_command", project_id=project_id, command="echo from bob > b.txt")
        await call(alice, "lock_path", project_id=project_id, path="a.txt", ttl_s=60)

        with anyio.fail_after(30):
            async for update in listener:
                assert getattr(update, "uri", None) == uri
                break
            await legacy_updates.wait()

        polled = await call(carol, "get_events", project_id=project_id, since_id=start)
        happened = [(e["agent_id"], e["kind"]) for e in polled["events"]]
        assert happened == [
            ("alice", "file.written"),
            ("bob", "execution.queued"),
            ("bob", "execution.started"),
            ("bob", "execution.finished"),
            ("alice", "lock.acquired"),
        ]
        ids = [e["event_id"] for e in polled["events"]]
        assert ids == sorted(ids)

        resource = await carol.read_resource(uri)
        feed = resource.contents[0].text  # type: ignore[union-attr]
        order = [m.group(1) for m in re.finditer(r'"kind":"([a-z._]+)"', feed)]
        assert order[-5:] == [kind for _, kind in happened]

    # A long-poll returns as soon as the next event lands.
    async def later_write() -> None:
        await call(bob, "write_file", project_id=project_id, path="c.txt", content="c")

    last = polled["last_event_id"]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(later_write)
            woke = await call(carol, "get_events", project_id=project_id, since_id=last, wait_s=60)
    first = woke["events"][0]
    assert (first["agent_id"], first["kind"]) == ("bob", "file.written")


async def test_fifty_agents_twenty_calls_each_all_recorded(
    local_config: ServerConfig, url: str, tokens: dict[str, str]
) -> None:
    names = [f"agent-{i:02d}" for i in range(50)]
    async with await Store.open(local_config.db_path) as store:
        extra = {name: await issue_token(store, name) for name in names}
    async with http_client(url, tokens["alice"]) as alice:
        project_id = (await call(alice, "create_project", name="crowd"))["project_id"]
        for name in names:
            await call(
                alice,
                "assign_agent",
                project_id=project_id,
                agent_id=name,
                access_level="read_write",
            )
        failures: list[str] = []

        async def agent(name: str) -> None:
            async with http_client(url, extra[name]) as client:
                for number in range(20):
                    result = await client.call_tool(
                        "run_command",
                        {"project_id": project_id, "command": f"echo {name} {number}"},
                    )
                    output = (result.structured_content or {}).get("stdout")
                    if result.is_error or output != f"{name} {number}\n":
                        failures.append(f"{name}/{number}: {result.content}")

        with anyio.fail_after(600):
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(agent, name)
        assert failures == []
        history = await call(alice, "get_execution_history", project_id=project_id, limit=1000)
    records = history["executions"]
    assert len(records) == 1000
    assert Counter(r["agent_id"] for r in records) == dict.fromkeys(names, 20)
    assert all(r["status"] == "completed" for r in records)


async def test_unsubscribing_ends_the_updates_of_that_feed_only(
    team: dict[str, Client], url: str, tokens: dict[str, str]
) -> None:
    alice = team["alice"]
    first = await shared_project(team)
    second = await shared_project(team)
    # Updates of one publisher pass go out in project id order: the test relies on it.
    dropped, kept = sorted((first, second))
    dropped_uri, kept_uri = f"project://{dropped}/events", f"project://{kept}/events"
    heard: list[str] = []
    heard_kept = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            heard.append(str(message.params.uri))
            if str(message.params.uri) == kept_uri:
                heard_kept.set()

    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {tokens['carol']}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(
            streamable_http_client(url, http_client=http), mode="legacy", message_handler=on_message
        ) as carol_legacy,
    ):
        for uri in (dropped_uri, kept_uri):
            with pytest.warns(MCPDeprecationWarning):
                await carol_legacy.subscribe_resource(uri)
        with pytest.warns(MCPDeprecationWarning):
            await carol_legacy.unsubscribe_resource(dropped_uri)
        await call(alice, "write_file", project_id=dropped, path="a.txt", content="a")
        await call(alice, "write_file", project_id=kept, path="b.txt", content="b")
        with anyio.fail_after(30):
            await heard_kept.wait()
    assert dropped_uri not in heard, heard
