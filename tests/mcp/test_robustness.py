"""Review findings turned into tests: stdin, FIFOs, forged channel messages, settings."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]


async def project(client: Client, **settings: object) -> str:
    info = await call(client, "create_project", name="robust", settings=settings or None)
    return str(info["project_id"])


async def test_stdin_larger_than_a_pipe_never_blocks_the_start_or_the_timeout(
    alice: Alice,
) -> None:
    client, _ = alice
    project_id = await project(client)
    with anyio.fail_after(60):
        ignored = await call(
            client,
            "run_command",
            project_id=project_id,
            command="sleep 1000",
            stdin="x" * 200_000,
            timeout_s=3,
        )
    assert ignored["timed_out"] is True
    partial = await call(
        client, "run_command", project_id=project_id, command="head -c 5", stdin="y" * 1_000_000
    )
    assert (partial["stdout"], partial["exit_code"]) == ("yyyyy", 0)


async def test_a_fifo_in_the_workspace_does_not_hang_file_calls(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)
    await call(client, "run_command", project_id=project_id, command="mkfifo pipe")
    # Each call must return: the per-test timeout fails a hang.
    error = await call_error(client, "read_file", project_id=project_id, path="pipe")
    assert "not a regular file" in error
    error = await call_error(
        client, "write_file", project_id=project_id, path="pipe", content="x", if_match="absent"
    )
    error = await call_error(
        client,
        "edit_file",
        project_id=project_id,
        path="pipe",
        edits=[{"old_text": "a", "new_text": "b"}],
    )
    assert "not a regular file" in error
    await call(client, "write_file", project_id=project_id, path="other.txt", content="ok")


async def test_commands_cannot_forge_messages_on_the_agents_channel(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)
    forged = '{"jsonrpc":"2.0","method":"exec.output","params":[1]}'
    result = await call(
        client,
        "run_command",
        project_id=project_id,
        command=f"for fd in /proc/$PPID/fd/*; do echo '{forged}' > $fd; done 2>&1; echo done",
    )
    assert result["stdout"].endswith("done\n")
    assert "Permission denied" in result["stdout"]
    again = await call(client, "run_command", project_id=project_id, command="echo still here")
    assert again["stdout"] == "still here\n"


async def test_a_finishing_command_does_not_revert_the_concurrency_setting(
    alice: Alice,
) -> None:
    client, _ = alice
    project_id = await project(client, max_concurrent_executions=1)
    first = await call(
        client,
        "run_command",
        project_id=project_id,
        command="while [ ! -e go ]; do sleep 0.05; done",
        wait_s=0,
    )
    await call(
        client,
        "update_project_settings",
        project_id=project_id,
        settings={"max_concurrent_executions": 4},
    )
    await call(client, "write_file", project_id=project_id, path="go", content="")
    with anyio.fail_after(60):
        while not (
            await call(client, "read_command_output", execution_id=first["execution_id"], wait_s=10)
        )["finished"]:
            pass
    listing = await call(client, "list_executions", project_id=project_id)
    assert listing["max_concurrent_executions"] == 4


async def test_a_conflict_names_who_deleted_the_file_whatever_path_they_used(
    alice: Alice,
) -> None:
    client, _ = alice
    project_id = await project(client)
    written = await call(client, "write_file", project_id=project_id, path="a.txt", content="1")
    await call(client, "delete_path", project_id=project_id, path="./a.txt")
    error = await call_error(
        client,
        "write_file",
        project_id=project_id,
        path="a.txt",
        content="2",
        if_match=written["sha256"],
    )
    assert "absent (deleted); last changed by alice" in error


async def test_vm_settings_changed_while_running_say_when_they_apply(alice: Alice) -> None:
    client, _ = alice
    project_id = await project(client)
    info = await call(
        client, "update_project_settings", project_id=project_id, settings={"network": "egress"}
    )
    assert info["notes"]
    assert "network apply when the VM next starts" in info["notes"][0]
    error = await call_error(
        client, "update_project_settings", project_id=project_id, settings={"cpus": 10_000}
    )
    assert "more than this server allows" in error
