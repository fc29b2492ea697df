"""Project policies: allowed tools, advisory command lists, network egress."""

from __future__ import annotations

import socket

import anyio
import pytest
from mcp import Client

from server.app import ServerHandle
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]


async def test_allowed_tools_limit_what_a_project_permits(alice: Alice) -> None:
    client, _ = alice
    project_id = (
        await call(
            client,
            "create_project",
            name="narrow",
            settings={"allowed_tools": ["read_file", "list_files", "write_file"]},
        )
    )["project_id"]
    await call(client, "write_file", project_id=project_id, path="a.txt", content="a")
    error = await call_error(client, "run_command", project_id=project_id, command="true")
    assert "does not permit the tool run_command" in error
    assert "update_project_settings" in error
    await call(client, "get_project", project_id=project_id)
    await call(
        client, "update_project_settings", project_id=project_id, settings={"allowed_tools": []}
    )
    await call(client, "run_command", project_id=project_id, command="true")


async def test_command_lists_are_applied_and_say_they_are_advisory(alice: Alice) -> None:
    client, _ = alice
    project_id = (
        await call(
            client,
            "create_project",
            name="careful",
            settings={"command_denylist": ["rm -rf *", "*curl*"]},
        )
    )["project_id"]
    error = await call_error(client, "run_command", project_id=project_id, command="rm -rf /x")
    assert "command_denylist" in error
    await call(
        client,
        "update_project_settings",
        project_id=project_id,
        settings={"command_denylist": [], "command_allowlist": ["echo *", "ls*"]},
    )
    assert (await call(client, "run_command", project_id=project_id, command="echo hi"))[
        "stdout"
    ] == "hi\n"
    error = await call_error(client, "run_command", project_id=project_id, command="cat /etc/hosts")
    assert "command_allowlist" in error


async def test_network_is_off_unless_the_project_allows_egress(alice: Alice) -> None:
    client, _ = alice
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        probe = (
            'python3 -c "import socket,sys\n'
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), 3); print('reached')\n"
            "except OSError as e:\n"
            "    print('blocked', e)\""
        )
        offline = (await call(client, "create_project", name="offline"))["project_id"]
        online = (
            await call(client, "create_project", name="online", settings={"network": "egress"})
        )["project_id"]
        blocked = await call(client, "run_command", project_id=offline, command=probe)
        with anyio.fail_after(30):
            reached = await call(client, "run_command", project_id=online, command=probe)
    assert blocked["stdout"].startswith("blocked")
    assert reached["stdout"] == "reached\n"
