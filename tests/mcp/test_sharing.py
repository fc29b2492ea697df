"""Members, settings and advisory locks, through the in-memory client plus a second agent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.helpers import call, call_error, eventually

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]


@pytest.fixture
async def pair(local_config: ServerConfig) -> AsyncIterator[tuple[Client, Client, str]]:
    """alice (owner) and bob (read_write) on one project; one server, two identities."""
    first = build_server(local_config, transport="memory", agent="alice")
    async with Client(first.mcp) as alice:
        assert first.state is not None
        await first.state.service.agents.ensure("bob")
        project_id = (await call(alice, "create_project", name="shared"))["project_id"]
        await call(
            alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
        )
        second = build_server(local_config, transport="memory", agent="bob")
        async with Client(second.mcp) as bob:
            yield alice, bob, project_id


async def test_locks_refuse_other_agents_writes_until_released(
    pair: tuple[Client, Client, str],
) -> None:
    alice, bob, project_id = pair
    locked = await call(alice, "lock_path", project_id=project_id, path="src", ttl_s=600)
    assert locked["lock"]["path"] == "src"
    error = await call_error(bob, "write_file", project_id=project_id, path="src/a.py", content="x")
    assert "locked by alice until" in error
    for tool, arguments in (
        ("delete_path", {"path": "src", "recursive": True}),
        ("move_path", {"source": "README", "destination": "src/README"}),
        ("lock_path", {"path": "src/deeper"}),
        ("lock_path", {"path": "."}),
    ):
        assert "locked by alice" in await call_error(bob, tool, project_id=project_id, **arguments)
    await call(alice, "write_file", project_id=project_id, path="src/a.py", content="mine")
    await call(bob, "write_file", project_id=project_id, path="docs/b.md", content="fine")
    error = await call_error(bob, "unlock_path", project_id=project_id, path="src")
    assert "belongs to alice" in error
    await call(alice, "unlock_path", project_id=project_id, path="/workspace/src/")
    await call(bob, "write_file", project_id=project_id, path="src/a.py", content="bob's")
    kinds = [e["kind"] for e in (await call(bob, "get_events", project_id=project_id))["events"]]
    assert "lock.acquired" in kinds
    assert "lock.released" in kinds


async def test_locks_expire_by_themselves(pair: tuple[Client, Client, str]) -> None:
    alice, bob, project_id = pair
    await call(alice, "lock_path", project_id=project_id, path="f.txt", ttl_s=0.2)

    async def expired() -> bool:
        return (await call(bob, "list_locks", project_id=project_id))["locks"] == []

    await eventually(expired, what="the lock expiring")
    await call(bob, "write_file", project_id=project_id, path="f.txt", content="after")


async def test_members_can_be_changed_but_the_owner_stays_admin(
    pair: tuple[Client, Client, str],
) -> None:
    alice, bob, project_id = pair
    error = await call_error(
        alice, "assign_agent", project_id=project_id, agent_id="alice", access_level="read_only"
    )
    assert "stays admin" in error
    error = await call_error(
        alice, "assign_agent", project_id=project_id, agent_id="nobody", access_level="read_only"
    )
    assert "projectvm agents add nobody" in error
    error = await call_error(alice, "remove_agent", project_id=project_id, agent_id="alice")
    assert "cannot be removed" in error
    await call(
        alice, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_only"
    )
    error = await call_error(bob, "write_file", project_id=project_id, path="x", content="x")
    assert "needs read_write" in error
    who = await call(bob, "whoami")
    assert who["projects"] == {project_id: "read_only"}
    left = await call(bob, "remove_agent", project_id=project_id, agent_id="bob")
    assert left["members"] == []
    assert (await call(bob, "list_projects"))["projects"] == []
    kinds = [e["kind"] for e in (await call(alice, "get_events", project_id=project_id))["events"]]
    assert kinds.count("member.assigned") == 2
    assert "member.removed" in kinds


async def test_settings_are_updated_partially_and_recorded(
    pair: tuple[Client, Client, str],
) -> None:
    alice, bob, project_id = pair
    updated = await call(
        alice,
        "update_project_settings",
        project_id=project_id,
        settings={"max_concurrent_executions": 2, "environment_variables": {"STAGE": "test"}},
    )
    assert updated["settings"]["max_concurrent_executions"] == 2
    assert updated["settings"]["auto_sleep_minutes"] == 30
    ran = await call(bob, "run_command", project_id=project_id, command="echo $STAGE")
    assert ran["stdout"] == "test\n"
    error = await call_error(
        bob,
        "update_project_settings",
        project_id=project_id,
        settings={"max_concurrent_executions": 9},
    )
    assert "needs admin" in error
    error = await call_error(
        alice,
        "update_project_settings",
        project_id=project_id,
        settings={"max_concurrent_executions": 0},
    )
    assert "max_concurrent_executions" in error
    events = (await call(bob, "get_events", project_id=project_id))["events"]
    [change] = [e for e in events if e["kind"] == "settings.updated"]
    assert change["agent_id"] == "alice"
    assert change["data"]["changed"]["max_concurrent_executions"] == {"from": 4, "to": 2}
