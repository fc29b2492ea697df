"""The core tools through the SDK's in-memory MCP client, on the local driver."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error, eventually

pytestmark = pytest.mark.anyio

Alice = tuple[Client, ServerHandle]


async def new_project(client: Client, **settings: object) -> str:
    info = await call(client, "create_project", name="test project", settings=settings or None)
    return str(info["project_id"])


async def test_every_tool_has_annotations_and_an_output_schema(alice: Alice) -> None:
    client, _ = alice
    tools = (await client.list_tools()).tools
    names = {tool.name for tool in tools}
    assert {
        "create_project",
        "list_projects",
        "get_project",
        "start_project",
        "stop_project",
        "delete_project",
        "run_command",
        "read_file",
        "write_file",
        "list_files",
        "edit_file",
        "search_files",
        "delete_path",
        "get_execution_history",
    } <= names
    for tool in tools:
        assert tool.annotations is not None, tool.name
        assert tool.annotations.read_only_hint is not None, tool.name
        assert tool.output_schema is not None, tool.name
        assert tool.description, tool.name


async def test_write_run_and_read_agree_and_the_file_is_on_the_host(alice: Alice) -> None:
    client, _ = alice
    project = await call(client, "create_project", name="demo", description="d")
    project_id = project["project_id"]
    assert project["status"] == "running"
    written = await call(
        client, "write_file", project_id=project_id, path="src/hello.txt", content="hi there\n"
    )
    ran = await call(client, "run_command", project_id=project_id, command="cat src/hello.txt")
    read = await call(client, "read_file", project_id=project_id, path="src/hello.txt")
    assert ran["stdout"] == read["content"] == "hi there\n"
    assert ran["exit_code"] == 0
    assert read["sha256"] == written["sha256"] == hashlib.sha256(b"hi there\n").hexdigest()
    on_host = Path(project["workspace_path"]) / "src" / "hello.txt"
    assert on_host.read_text() == "hi there\n"


async def test_a_nonzero_exit_is_a_normal_result(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    result = await call(client, "run_command", project_id=project_id, command="echo no >&2; exit 7")
    assert (result["exit_code"], result["stderr"], result["status"]) == (7, "no\n", "completed")


async def test_a_timeout_returns_promptly_and_leaves_no_process(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    with anyio.fail_after(30):
        result = await call(
            client,
            "run_command",
            project_id=project_id,
            command="sh -c 'sleep 100 & sleep 100'",
            timeout_s=2,
        )
    assert result["timed_out"] is True
    assert result["status"] == "timed_out"
    assert 2000 <= result["duration_ms"] < 10000
    listing = await call(
        client,
        "run_command",
        project_id=project_id,
        command="for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null",
    )
    assert "sleep 100" not in listing["stdout"]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "escape/etc/passwd", "escape/tmp/new"])
async def test_paths_outside_the_workspace_are_refused(alice: Alice, path: str) -> None:
    client, _ = alice
    project_id = await new_project(client)
    await call(client, "run_command", project_id=project_id, command="ln -s / escape")
    read_error = await call_error(client, "read_file", project_id=project_id, path=path)
    write_error = await call_error(
        client, "write_file", project_id=project_id, path=path, content="x"
    )
    for message in (read_error, write_error):
        assert "outside the workspace" in message
    check = await call(
        client, "run_command", project_id=project_id, command="ls /tmp/new /x 2>&1 | wc -l"
    )
    assert check["stdout"].strip() == "2"  # two "No such file" lines: nothing was created


async def test_binary_content_round_trips_as_base64(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    payload = bytes(range(256))
    await call(
        client,
        "write_file",
        project_id=project_id,
        path="blob.bin",
        content=base64.b64encode(payload).decode(),
        encoding="base64",
    )
    read = await call(client, "read_file", project_id=project_id, path="blob.bin")
    assert read["encoding"] == "base64"
    assert base64.b64decode(read["content"]) == payload


async def test_reading_by_lines(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    text = "".join(f"{i}\n" for i in range(1, 101))
    await call(client, "write_file", project_id=project_id, path="n.txt", content=text)
    part = await call(client, "read_file", project_id=project_id, path="n.txt", offset=10, limit=3)
    assert part["content"] == "10\n11\n12\n"
    assert (part["total_lines"], part["truncated"]) == (100, True)


async def test_edit_file_applies_exact_edits_and_returns_a_diff(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    await call(client, "write_file", project_id=project_id, path="a.py", content="x = 1\ny = 2\n")
    preview = await call(
        client,
        "edit_file",
        project_id=project_id,
        path="a.py",
        edits=[{"old_text": "y = 2", "new_text": "y = 3"}],
        dry_run=True,
    )
    assert preview["applied"] is False
    assert "-y = 2" in preview["diff"]
    assert "+y = 3" in preview["diff"]
    unchanged = await call(client, "read_file", project_id=project_id, path="a.py")
    assert unchanged["content"] == "x = 1\ny = 2\n"
    done = await call(
        client,
        "edit_file",
        project_id=project_id,
        path="a.py",
        edits=[{"old_text": "y = 2", "new_text": "y = 3"}],
    )
    assert done["applied"] is True
    error = await call_error(
        client,
        "edit_file",
        project_id=project_id,
        path="a.py",
        edits=[{"old_text": "x = 1", "new_text": "x = 5"}],
        if_match=unchanged["sha256"],
    )
    assert "changed since you read it" in error
    assert "last changed by alice" in error


async def test_list_search_move_and_delete(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    await call(client, "write_file", project_id=project_id, path="pkg/a.py", content="TODO one\n")
    await call(client, "write_file", project_id=project_id, path="pkg/b.txt", content="none\n")
    listing = await call(client, "list_files", project_id=project_id, recursive=True)
    assert [e["path"] for e in listing["entries"]] == ["pkg", "pkg/a.py", "pkg/b.txt"]
    found = await call(client, "search_files", project_id=project_id, pattern="TODO")
    assert found["matches"] == [{"path": "pkg/a.py", "line": 1, "text": "TODO one"}]
    await call(client, "move_path", project_id=project_id, source="pkg/a.py", destination="a.py")
    error = await call_error(client, "delete_path", project_id=project_id, path="pkg")
    assert "recursive" in error
    await call(client, "delete_path", project_id=project_id, path="pkg", recursive=True)
    listing = await call(client, "list_files", project_id=project_id)
    assert [e["path"] for e in listing["entries"]] == ["a.py"]


async def test_stop_and_start_keep_the_workspace(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    await call(client, "write_file", project_id=project_id, path="keep.txt", content="kept")
    assert (await call(client, "stop_project", project_id=project_id))["status"] == "stopped"
    info = await call(client, "get_project", project_id=project_id)
    assert (info["status"], info["status_reason"]) == ("stopped", "stopped by alice")
    assert (await call(client, "start_project", project_id=project_id))["status"] == "running"
    read = await call(client, "read_file", project_id=project_id, path="keep.txt")
    assert read["content"] == "kept"
    await call(client, "stop_project", project_id=project_id)
    woken = await call(client, "read_file", project_id=project_id, path="keep.txt")
    assert woken["content"] == "kept"
    assert (await call(client, "get_project", project_id=project_id))["status"] == "running"


async def test_delete_removes_the_vm_and_workspace_and_is_idempotent(alice: Alice) -> None:
    client, _ = alice
    project = await call(client, "create_project", name="doomed")
    workspace = Path(project["workspace_path"])
    assert workspace.is_dir()
    deleted = await call(client, "delete_project", project_id=project["project_id"])
    assert deleted["deleted"] is True
    assert not workspace.exists()
    again = await call(client, "delete_project", project_id=project["project_id"])
    assert again["deleted"] is False
    listed = await call(client, "list_projects")
    assert project["project_id"] not in {p["project_id"] for p in listed["projects"]}


async def test_every_run_leaves_an_attributed_execution_record(alice: Alice) -> None:
    client, handle = alice
    project_id = await new_project(client)
    await call(client, "run_command", project_id=project_id, command="echo one")
    await call(client, "run_command", project_id=project_id, command="exit 4")
    history = await call(client, "get_execution_history", project_id=project_id)
    records = history["executions"]
    assert [(r["command"], r["exit_code"], r["agent_id"]) for r in records] == [
        ("exit 4", 4, "alice"),
        ("echo one", 0, "alice"),
    ]
    for record in records:
        assert record["started_at"]
        assert record["completed_at"]
        assert record["status"] == "completed"
    assert handle.state is not None
    stored = await handle.state.service.store.executions.page(project_id)
    assert {e.execution_id for e in stored} == {r["execution_id"] for r in records}


async def test_a_command_killed_by_stop_project_is_recorded_as_killed(alice: Alice) -> None:
    client, _ = alice
    project_id = await new_project(client)
    outcome: dict[str, object] = {}

    async def long_command() -> None:
        outcome.update(
            await call(
                client,
                "run_command",
                project_id=project_id,
                command="touch started.flag; sleep 300",
            )
        )

    async def started() -> bool:
        listing = await call(client, "list_files", project_id=project_id)
        return any(e["path"] == "started.flag" for e in listing["entries"])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(long_command)
            await eventually(started, what="the long command starting")
            await call(client, "stop_project", project_id=project_id)
    assert outcome["status"] == "killed"
    assert "stopped by alice" in str(outcome["reason"])
    history = await call(client, "get_execution_history", project_id=project_id)
    [record] = [r for r in history["executions"] if r["command"].startswith("touch started")]
    assert record["status"] == "killed"
    assert record["completed_at"] is not None


async def test_errors_say_what_to_do_next(alice: Alice) -> None:
    client, _ = alice
    error = await call_error(client, "get_project", project_id="prj_nope")
    assert "list_projects" in error
    project_id = await new_project(client)
    error = await call_error(client, "run_command", project_id=project_id, command="  ")
    assert "empty" in error
    error = await call_error(client, "read_file", project_id=project_id, path="missing.txt")
    assert "does not exist" in error
    error = await call_error(client, "create_project", name="x", settings={"auto_sleep_minutez": 3})
    assert "auto_sleep_minutez" in error
