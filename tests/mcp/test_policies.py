"""Project policies: allowed operations, advisory command lists, environment, network egress."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from mcp import Client

from server.core.service import ENDPOINTS
from server.domain.operations import OPERATIONS, Operation
from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error, outside_address

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]
MakeProject = Callable[..., Awaitable[str]]


async def test_allowed_tools_limit_what_a_project_permits(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects(
        "narrow", allowed_tools=["read_file", "list_files", "write_file"]
    )
    await call(client, "write_file", project_id=project_id, path="a.txt", content="a")
    error = await call_error(client, "run_command", project_id=project_id, command="true")
    assert "does not permit the tool run_command" in error
    assert "update_project_settings" in error
    await call(client, "get_project", project_id=project_id)
    await call(
        client, "update_project_settings", project_id=project_id, settings={"allowed_tools": []}
    )
    await call(client, "run_command", project_id=project_id, command="true")


async def test_unknown_operation_names_in_allowed_tools_are_refused(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("typo")
    error = await call_error(
        client,
        "update_project_settings",
        project_id=project_id,
        settings={"allowed_tools": ["read_flie"]},
    )
    assert "read_flie" in error
    assert "choose from" in error


def sample_arguments(project_id: str, execution_id: str) -> dict[Operation, dict[str, Any]]:
    """A call of every project-scoped operation that the policy alone would decide."""
    p = {"project_id": project_id}
    e = {"execution_id": execution_id}
    return {
        Operation.GET_PROJECT: p,
        Operation.START_PROJECT: p,
        Operation.STOP_PROJECT: p,
        Operation.DELETE_PROJECT: p,
        Operation.UPDATE_PROJECT_SETTINGS: {**p, "settings": {"max_concurrent_executions": 3}},
        Operation.RUN_COMMAND: {**p, "command": "true"},
        Operation.READ_COMMAND_OUTPUT: e,
        Operation.SEND_INPUT: {**e, "data": "x"},
        Operation.CANCEL_EXECUTION: e,
        Operation.LIST_EXECUTIONS: p,
        Operation.GET_EXECUTION_HISTORY: p,
        Operation.READ_FILE: {**p, "path": "a.txt"},
        Operation.WRITE_FILE: {**p, "path": "b.txt", "content": "b"},
        Operation.EDIT_FILE: {**p, "path": "a.txt", "edits": [{"old_text": "a", "new_text": "a"}]},
        Operation.LIST_FILES: p,
        Operation.SEARCH_FILES: {**p, "pattern": "a"},
        Operation.DELETE_PATH: {**p, "path": "nothing-here"},
        Operation.MOVE_PATH: {**p, "source": "nothing-here", "destination": "x"},
        Operation.LIST_MEMBERS: p,
        Operation.ASSIGN_AGENT: {**p, "agent_id": "alice", "access_level": "admin"},
        Operation.REMOVE_AGENT: {**p, "agent_id": "nobody"},
        Operation.LOCK_PATH: {**p, "path": "a.txt"},
        Operation.UNLOCK_PATH: {**p, "path": "a.txt"},
        Operation.LIST_LOCKS: p,
        Operation.GET_EVENTS: p,
        Operation.OPEN_TERMINAL: {**p, "command": "true"},
        Operation.TERMINAL_WRITE: {**e, "text": "x"},
        Operation.TERMINAL_READ: e,
        Operation.RESIZE_TERMINAL: {**e, "cols": 100, "rows": 30},
        Operation.CLOSE_TERMINAL: e,
        Operation.LIST_TERMINALS: p,
    }


def test_every_operation_has_a_sample_call_here() -> None:
    project_scoped = {op for op, spec in OPERATIONS.items() if spec.level is not None}
    assert set(sample_arguments("p", "e")) == project_scoped
    assert set(ENDPOINTS) == set(Operation)


async def test_the_policy_is_consulted_for_every_operation_on_every_surface(
    alice: Alice, alice_projects: MakeProject
) -> None:
    """For each operation X: a project whose allowed tools are all but X refuses X, and only
    X — whatever else goes wrong with the sample calls, it is never the policy."""
    client, _ = alice
    project_id = await alice_projects("policy")
    await call(client, "write_file", project_id=project_id, path="a.txt", content="a")
    done = await call(client, "run_command", project_id=project_id, command="true")
    samples = sample_arguments(project_id, done["execution_id"])
    everything = [op.value for op in Operation]
    refusal = "does not permit the tool"
    for excluded, spec in OPERATIONS.items():
        if spec.level is None or spec.always_allowed:
            continue
        allowed = [name for name in everything if name != excluded.value]
        await call(
            client,
            "update_project_settings",
            project_id=project_id,
            settings={"allowed_tools": allowed},
        )
        for operation, arguments in samples.items():
            ends_project = operation in (Operation.DELETE_PROJECT, Operation.STOP_PROJECT)
            if ends_project and operation != excluded:
                continue  # would end the project under the test; only called when refused
            result = await client.call_tool(operation.value, arguments)
            text = " ".join(getattr(block, "text", "") for block in result.content)
            if operation == excluded:
                assert result.is_error, (excluded, text)
                assert refusal in text, (excluded, text)
            else:
                assert refusal not in text, (excluded, operation, text)
    await call(
        client, "update_project_settings", project_id=project_id, settings={"allowed_tools": []}
    )


async def test_always_allowed_operations_cannot_be_forbidden(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("locked-down", allowed_tools=["read_file"])
    await call(client, "get_project", project_id=project_id)
    await call(client, "list_members", project_id=project_id)
    await call(
        client, "update_project_settings", project_id=project_id, settings={"allowed_tools": []}
    )


async def test_command_lists_are_applied_and_say_they_are_advisory(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("careful", command_denylist=["rm -rf *", "*curl*"])
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


async def test_project_environment_wins_over_a_callers_env(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    project_id = await alice_projects("env", environment_variables={"STAGE": "review"})
    ran = await call(
        client, "run_command", project_id=project_id, command="echo $STAGE $MINE", env={"MINE": "1"}
    )
    assert ran["stdout"] == "review 1\n"
    error = await call_error(
        client, "run_command", project_id=project_id, command="echo $STAGE", env={"STAGE": "prod"}
    )
    assert "STAGE is set by project" in error
    assert "environment_variables" in error


async def test_network_is_off_unless_the_project_allows_egress(
    alice: Alice, alice_projects: MakeProject
) -> None:
    client, _ = alice
    address = outside_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address (or no iproute2) to reach")
    with socket.socket() as listener:
        # Outside the host's loopback: egress never reaches that (tests/security).
        listener.bind((address, 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        probe = (
            'python3 -c "import socket,sys\n'
            "try:\n"
            f"    socket.create_connection(('{address}', {port}), 3); print('reached')\n"
            "except OSError as e:\n"
            "    print('blocked', e)\""
        )
        offline = await alice_projects("offline")
        online = await alice_projects("online", network="egress")
        blocked = await call(client, "run_command", project_id=offline, command=probe)
        with anyio.fail_after(30):
            reached = await call(client, "run_command", project_id=online, command=probe)
    assert blocked["stdout"].startswith("blocked")
    assert reached["stdout"] == "reached\n"
