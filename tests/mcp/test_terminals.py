"""Terminals through the MCP tools: an agent drives a TTY program, and the audit log keeps it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from mcp import Client

from server.core.requests import OpenTerminal, RunCommand
from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error, eventually

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]
MakeProject = Callable[..., Awaitable[str]]


async def test_the_terminal_tools_drive_an_interactive_python_repl_to_compute_a_value(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("repl")
    opened = await call(client, "open_terminal", project_id=project_id, command="python3 -q")
    terminal = opened["execution_id"]
    assert (opened["status"], opened["agent_id"], opened["command"]) == (
        "running",
        "alice",
        "python3 -q",
    )
    prompt = await call(client, "terminal_read", execution_id=terminal, wait_for=">>> $", wait_s=30)
    assert prompt["matched"], (prompt["screen"], prompt)
    typed = await call(
        client,
        "terminal_write",
        execution_id=terminal,
        text="sum(i * i for i in range(10)) + 0x10",
        keys=["enter"],
    )
    answer = await call(
        client,
        "terminal_read",
        execution_id=terminal,
        mode="output",
        since=typed["next_since"],
        wait_for=r"^\d+$",
        wait_s=30,
    )
    assert answer["matched"], answer
    assert answer["output"].splitlines()[:2] == ["sum(i * i for i in range(10)) + 0x10", "301"]
    screen = await call(client, "terminal_read", execution_id=terminal, wait_for=">>> $", wait_s=30)
    assert screen["screen"].splitlines() == [
        ">>> sum(i * i for i in range(10)) + 0x10",
        "301",
        ">>> ",
    ]
    assert (screen["cursor_row"], screen["cursor_col"]) == (2, 4)
    await call(client, "terminal_write", execution_id=terminal, keys=["ctrl-d"])
    ended = await call(client, "terminal_read", execution_id=terminal, wait_s=30)
    while not ended["finished"]:
        ended = await call(client, "terminal_read", execution_id=terminal, wait_s=30)
    assert (ended["status"], ended["exit_code"]) == ("completed", 0)
    history = await call(
        client, "get_execution_history", project_id=project_id, include_output=True
    )
    [entry] = history["executions"]
    assert entry["execution_id"] == terminal
    assert (entry["kind"], entry["agent_id"], entry["command"], entry["status"]) == (
        "terminal",
        "alice",
        "python3 -q",
        "completed",
    )
    assert "301" in entry["output"]  # the screen it ended with
    assert entry["started_at"] is not None
    assert entry["completed_at"] is not None


async def test_a_terminal_takes_an_execution_slot_and_waits_its_turn_fairly(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, handle = alice
    project_id = await alice_projects("one-slot", max_concurrent_executions=1)
    assert handle.state is not None
    await handle.state.service.agents.ensure("bob")
    await call(
        client, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
    )
    first = await call(client, "open_terminal", project_id=project_id, command="cat")
    command = await call(client, "run_command", project_id=project_id, command="echo ran", wait_s=0)
    # bob's (one agent holds at most half the slots' worth of terminals, at least one).
    opened = await handle.state.service.act("bob", OpenTerminal(project_id=project_id))
    second = opened.model_dump(mode="json")
    assert (first["status"], command["status"], second["status"]) == ("running", "queued", "queued")
    listed = await call(client, "list_terminals", project_id=project_id)
    assert [t["queue_position"] for t in listed["terminals"]] == [None, 2]
    active = await call(client, "list_executions", project_id=project_id)
    assert [(e["kind"], e["status"]) for e in active["executions"]] == [
        ("terminal", "running"),
        ("command", "queued"),
        ("terminal", "queued"),
    ]
    typed = await call_error(
        client, "terminal_write", execution_id=second["execution_id"], text="x"
    )
    assert "waiting for a free slot" in typed
    closed = await call(client, "close_terminal", execution_id=first["execution_id"])
    assert (closed["status"], closed["reason"]) == ("completed", "closed by alice")
    ran = await call(client, "read_command_output", execution_id=command["execution_id"], wait_s=30)
    while not ran["finished"]:
        ran = await call(
            client, "read_command_output", execution_id=command["execution_id"], wait_s=30
        )
    assert ran["stdout"] == "ran\n"
    shell = await call(
        client, "terminal_read", execution_id=second["execution_id"], wait_for=r"[$#] $", wait_s=30
    )
    assert (shell["status"], shell["matched"]) == ("running", True)
    await call(client, "close_terminal", execution_id=second["execution_id"])


async def test_a_terminal_left_without_input_is_closed_after_its_idle_timeout(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("idle")
    opened = await call(
        client, "open_terminal", project_id=project_id, command="cat", idle_timeout_s=1
    )
    ended = await call(client, "terminal_read", execution_id=opened["execution_id"], wait_s=30)
    while not ended["finished"]:
        ended = await call(client, "terminal_read", execution_id=opened["execution_id"], wait_s=30)
    assert ended["status"] == "completed"
    assert ended["reason"] == "closed after 1s without input (idle_timeout_s)"


async def test_typing_keeps_a_project_awake_and_an_idle_terminal_sleeps_with_it(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("drowsy", auto_sleep_minutes=0.02)  # 1.2 s
    opened = await call(client, "open_terminal", project_id=project_id, command="cat")
    terminal = opened["execution_id"]
    began = anyio.current_time()
    while anyio.current_time() - began < 3:  # typing for longer than the project may idle
        typed = await call(client, "terminal_write", execution_id=terminal, text="x")
        await call(
            client, "terminal_read", execution_id=terminal, since=typed["next_since"], wait_s=5
        )
    assert (await call(client, "get_project", project_id=project_id))["status"] == "running"
    ended = await call(client, "terminal_read", execution_id=terminal, wait_s=30)
    while not ended["finished"]:
        ended = await call(client, "terminal_read", execution_id=terminal, wait_s=30)
    assert (ended["status"], ended["reason"]) == ("killed", "the project went to sleep")

    async def asleep() -> bool:
        project = await call(client, "get_project", project_id=project_id)
        return project["status"] == "stopped" and "asleep" in project["status_reason"]

    await eventually(asleep, what="the project going to sleep")


async def test_commands_and_terminals_each_point_to_their_own_tools(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("tools")
    command = await call(client, "run_command", project_id=project_id, command="true")
    terminal = await call(client, "open_terminal", project_id=project_id, command="cat")
    terminal_id = terminal["execution_id"]
    wrong = await call_error(client, "terminal_read", execution_id=command["execution_id"])
    assert "is a command, not a terminal" in wrong
    assert "read_command_output" in wrong
    for tool, arguments, hint in (
        ("read_command_output", {}, "terminal_read"),
        ("send_input", {"data": "x"}, "terminal_write"),
        ("cancel_execution", {}, "close_terminal"),
    ):
        wrong = await call_error(client, tool, execution_id=terminal_id, **arguments)
        assert "is a terminal, not a command" in wrong
        assert hint in wrong
    unknown = await call_error(client, "terminal_write", execution_id=terminal_id, keys=["hyper"])
    assert "unknown key 'hyper'" in unknown
    await call(client, "close_terminal", execution_id=terminal_id)
    again = await call(client, "close_terminal", execution_id=terminal_id)  # already closed: fine
    assert again["status"] == "completed"
    ended = await call_error(client, "terminal_write", execution_id=terminal_id, text="x")
    assert "has ended" in ended
    assert "open_terminal opens a new one" in ended


async def test_the_command_lists_apply_to_terminals_and_an_allowlist_refuses_a_shell(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects(
        "listed", command_allowlist=["python3*"], command_denylist=["python3 -c*"]
    )
    shell = await call_error(client, "open_terminal", project_id=project_id)
    assert "command_allowlist" in shell
    assert "a login shell would run anything" in shell
    denied = await call_error(
        client, "open_terminal", project_id=project_id, command="python3 -c 'print(1)'"
    )
    assert "command_denylist" in denied
    allowed = await call(client, "open_terminal", project_id=project_id, command="python3 -q")
    await call(client, "close_terminal", execution_id=allowed["execution_id"])


async def test_a_backtracking_wait_for_pattern_is_refused_without_holding_the_server(
    alice: Alice, alice_projects: MakeProject
) -> None:
    """``(a|a)+$`` against a line of a's backtracks exponentially: with Python's ``re`` on the
    event loop this one call held every project for minutes."""
    client, _ = alice
    project_id = await alice_projects("redos")
    command = 'python3 -c \'print("a" * 60 + "!")\'; cat > /dev/null'
    opened = await call(client, "open_terminal", project_id=project_id, command=command)
    terminal = opened["execution_id"]
    await call(client, "terminal_read", execution_id=terminal, wait_for="a!", wait_s=30)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        began = anyio.current_time()
        with anyio.fail_after(20):
            error = await call_error(
                client, "terminal_read", execution_id=terminal, wait_for="(a|a)+$", wait_s=5
            )
        took = anyio.current_time() - began
        group.cancel_scope.cancel()
    assert "took more than 0.25s to match" in error, error
    # The event loop kept running meanwhile (a tick every 10 ms, allowing for a loaded host).
    assert ticks >= took / 0.01 / 4, (ticks, took)
    await call(client, "close_terminal", execution_id=terminal)


async def test_one_agent_cannot_hold_every_slot_with_idle_terminals(
    alice: Alice, alice_projects: MakeProject
) -> None:
    """Terminals take execution slots and live until closed or idle for idle_timeout_s; one
    agent holding all of them would keep everyone's commands waiting."""
    client, handle = alice
    project_id = await alice_projects("hog", max_concurrent_executions=4)
    assert handle.state is not None
    await handle.state.service.agents.ensure("bob")
    await call(
        client, "assign_agent", project_id=project_id, agent_id="bob", access_level="read_write"
    )
    opened = [
        await call(client, "open_terminal", project_id=project_id, command="sleep infinity")
        for _ in range(2)
    ]
    error = await call_error(
        client, "open_terminal", project_id=project_id, command="sleep infinity"
    )
    assert "already holds 2 terminals" in error, error
    assert "close_terminal" in error
    # The slots left serve everyone else: bob's command runs at once.
    done = await handle.state.service.act(
        "bob", RunCommand(project_id=project_id, command="echo served")
    )
    assert done.stdout == "served\n"
    for terminal in opened:
        await call(client, "close_terminal", execution_id=terminal["execution_id"])
    again = await call(client, "open_terminal", project_id=project_id, command="true")
    assert again["status"] in ("running", "completed")
