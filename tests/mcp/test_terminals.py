"""Terminals through the MCP tools: an agent drives a TTY program, and the audit log keeps it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from mcp import Client

from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error

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
    prompt = await call(
        client, "terminal_read", execution_id=terminal, wait_for=">>> $", wait_s=30
    )
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
    history = await call(client, "get_execution_history", project_id=project_id, include_output=True)
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
