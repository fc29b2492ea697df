"""Long-running commands: handles, following, input, cancellation, progress and the queue."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from server.core.requests import WriteFile
from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error, eventually

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]


async def project(client: Client, **settings: object) -> str:
    info = await call(client, "create_project", name="long", settings=settings or None)
    return str(info["project_id"])


async def follow_to_end(client: Client, execution_id: str, since: int = 0) -> dict[str, object]:
    stdout = ""
    with anyio.fail_after(60):
        while True:
            chunk = await call(
                client, "read_command_output", execution_id=execution_id, since=since, wait_s=10
            )
            stdout += chunk["stdout"]
            since = chunk["next_since"]
            if chunk["finished"]:
                return {**chunk, "stdout": stdout}


async def test_a_command_outliving_wait_s_returns_a_handle_to_follow(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)
    handle = await call(
        client,
        "run_command",
        project_id=project_id,
        command="echo early; while [ ! -e go ]; do sleep 0.05; done; echo late; exit 3",
        wait_s=0.2,
    )
    assert handle["status"] == "running"
    assert handle["exit_code"] is None
    await call(client, "write_file", project_id=project_id, path="go", content="")
    done = await follow_to_end(client, handle["execution_id"])
    assert done["stdout"] == "early\nlate\n"
    assert (done["status"], done["exit_code"]) == ("completed", 3)
    again = await call(client, "read_command_output", execution_id=handle["execution_id"])
    assert again["stdout"] == "early\nlate\n"


async def test_input_can_be_sent_to_a_running_command(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)
    handle = await call(
        client,
        "run_command",
        project_id=project_id,
        command="read name; echo hello $name; read rest; echo bye $rest",
        keep_stdin_open=True,
        wait_s=0,
    )
    execution_id = handle["execution_id"]

    async def running() -> bool:
        listing = await call(client, "list_executions", project_id=project_id, state="running")
        return execution_id in {e["execution_id"] for e in listing["executions"]}

    await eventually(running, what="the command starting")
    await call(client, "send_input", execution_id=execution_id, data="world\n")
    await call(client, "send_input", execution_id=execution_id, data="now\n", eof=True)
    done = await follow_to_end(client, execution_id)
    assert done["stdout"] == "hello world\nbye now\n"
    error = await call_error(client, "send_input", execution_id=execution_id, data="late")
    assert "finished" in error
    plain = await call(client, "run_command", project_id=project_id, command="sleep 5", wait_s=0)
    await eventually(
        lambda: _has_handle(client, project_id, plain["execution_id"]),
        what="the plain command starting",
    )
    error = await call_error(client, "send_input", execution_id=plain["execution_id"], data="x")
    assert "keep_stdin_open" in error
    await call(client, "cancel_execution", execution_id=plain["execution_id"])


async def _has_handle(client: Client, project_id: str, execution_id: str) -> bool:
    listing = await call(client, "list_executions", project_id=project_id, state="running")
    return execution_id in {e["execution_id"] for e in listing["executions"]}


async def test_queued_and_running_commands_can_be_listed_and_cancelled(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client, max_concurrent_executions=1)
    first = await call(client, "run_command", project_id=project_id, command="sleep 300", wait_s=0)
    second = await call(
        client, "run_command", project_id=project_id, command="echo never", wait_s=0
    )
    third = await call(client, "run_command", project_id=project_id, command="echo third", wait_s=0)
    assert second["status"] == "queued"
    listing = await call(client, "list_executions", project_id=project_id)
    positions = {e["execution_id"]: e["queue_position"] for e in listing["executions"]}
    assert positions == {
        first["execution_id"]: None,
        second["execution_id"]: 1,
        third["execution_id"]: 2,
    }
    assert listing["max_concurrent_executions"] == 1
    cancelled = await call(client, "cancel_execution", execution_id=second["execution_id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["exit_code"] is None
    killed = await call(client, "cancel_execution", execution_id=first["execution_id"])
    assert killed["status"] == "cancelled"
    assert killed["reason"] == "cancelled by alice"
    assert killed["exit_code"] == 137
    done = await follow_to_end(client, third["execution_id"])
    assert done["stdout"] == "third\n"
    history = await call(client, "get_execution_history", project_id=project_id)
    statuses = {r["command"]: r["status"] for r in history["executions"]}
    assert statuses == {
        "sleep 300": "cancelled",
        "echo never": "cancelled",
        "echo third": "completed",
    }
    never = next(r for r in history["executions"] if r["command"] == "echo never")
    assert never["started_at"] is None


async def test_progress_is_reported_while_a_command_runs(alice: Alice) -> None:
    """The command runs until a progress message has reached the client; then it is let go."""
    client, handle = alice
    project_id = await project(client)
    updates: list[str] = []
    assert handle.state is not None
    service = handle.state.service

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(message or "")
        if len(updates) == 1:
            await service.act("alice", WriteFile(project_id=project_id, path="go", content=""))

    result = await client.call_tool(
        "run_command",
        {
            "project_id": project_id,
            "command": "echo one; while [ ! -e go ]; do sleep 0.01; done; echo two",
        },
        progress_callback=on_progress,
    )
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "one\ntwo\n"
    assert updates[0].startswith("running")


async def test_cancelling_the_request_kills_the_command(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)

    async def started() -> bool:
        listing = await call(client, "list_files", project_id=project_id)
        return any(e["path"] == "started.flag" for e in listing["entries"])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:

            async def long_call() -> None:
                await client.call_tool(
                    "run_command",
                    {"project_id": project_id, "command": "touch started.flag; exec sleep 301"},
                )

            group.start_soon(long_call)
            await eventually(started, what="the command starting")
            group.cancel_scope.cancel()

    async def recorded() -> bool:
        history = await call(client, "get_execution_history", project_id=project_id)
        return any(r["status"] == "cancelled" for r in history["executions"])

    await eventually(recorded, what="the cancellation being recorded")
    processes = await call(
        client,
        "run_command",
        project_id=project_id,
        command="for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null",
    )
    assert "sleep 301" not in processes["stdout"]


async def test_stopping_a_project_kills_queued_commands_too(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client, max_concurrent_executions=1)
    running = await call(
        client, "run_command", project_id=project_id, command="sleep 300", wait_s=0
    )
    queued = await call(
        client, "run_command", project_id=project_id, command="echo later", wait_s=0
    )
    await call(client, "stop_project", project_id=project_id)
    history = await call(client, "get_execution_history", project_id=project_id)
    statuses = {r["execution_id"]: (r["status"], r["reason"]) for r in history["executions"]}
    assert statuses[running["execution_id"]][0] == "killed"
    assert statuses[queued["execution_id"]][0] == "killed"
    assert "stopped by alice" in statuses[queued["execution_id"]][1]
