"""Path traversal in every form the file API can be handed, on every driver."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

Owner = tuple[Client, ServerHandle, str]

ESCAPES = [
    "../x",
    "../../etc/passwd",
    "a/../../x",
    "./../workspace/../etc/passwd",
    "/etc/passwd",
    "/workspace/../etc/passwd",
    "/tmp/canary",
    "escape/etc/passwd",
    "escape/tmp/canary",
    "up/tmp/canary",
    "abs-up/canary",
]
# Encodings and separators the API does not decode: they must stay literal names inside.
LITERALS = ["%2e%2e/%2e%2e/etc/passwd", "..%2fetc%2fpasswd", "..\\..\\etc\\passwd"]
FINGERPRINT = "md5sum /etc/passwd /tmp/canary; ls -a / | md5sum"


async def prepare(client: Client, project_id: str) -> str:
    """Plant links that point out, and a canary outside; return a fingerprint of outside."""
    await call(
        client,
        "run_command",
        project_id=project_id,
        command="echo canary > /tmp/canary; ln -sfn / escape; ln -sfn ../../.. up; "
        "ln -sfn /tmp abs-up",
    )
    return str(
        (await call(client, "run_command", project_id=project_id, command=FINGERPRINT))["stdout"]
    )


async def test_every_escape_is_refused_by_every_file_tool(owner: Owner) -> None:
    client, _, project_id = owner
    before = await prepare(client, project_id)
    for path in ESCAPES:
        attempts = {
            "read_file": {"path": path},
            "write_file": {"path": path, "content": "pwned"},
            "edit_file": {"path": path, "edits": [{"old_text": "root", "new_text": "pwned"}]},
            "delete_path": {"path": path},
            "list_files": {"path": path},
            "search_files": {"path": path, "pattern": "root"},
            "move_path": {"source": "escape", "destination": path},
        }
        for tool, arguments in attempts.items():
            error = await call_error(client, tool, project_id=project_id, **arguments)
            assert "outside the workspace" in error, f"{tool} {path}: {error}"
        error = await call_error(
            client, "run_command", project_id=project_id, command="pwd", cwd=path
        )
        assert "outside the workspace" in error or "not a directory" in error, error
    after = await call(client, "run_command", project_id=project_id, command=FINGERPRINT)
    assert after["stdout"] == before


async def test_encoded_traversal_stays_a_literal_name_inside(owner: Owner) -> None:
    client, _, project_id = owner
    before = await prepare(client, project_id)
    for path in LITERALS:
        written = await call(
            client, "write_file", project_id=project_id, path=path, content="literal"
        )
        assert written["path"] == path  # one literal name, not a way out
        read = await call(client, "read_file", project_id=project_id, path=path)
        assert read["content"] == "literal"
    after = await call(client, "run_command", project_id=project_id, command=FINGERPRINT)
    assert after["stdout"] == before
    inside = await call(
        client, "run_command", project_id=project_id, command="find . -name '*passwd*' | sort"
    )
    assert "%2e%2e/%2e%2e/etc/passwd" in inside["stdout"]


async def test_a_nul_byte_is_refused(owner: Owner) -> None:
    client, _, project_id = owner
    for tool, arguments in (
        ("read_file", {"path": "a\x00b"}),
        ("write_file", {"path": "a\x00b", "content": "x"}),
        ("delete_path", {"path": "a\x00/b"}),
    ):
        error = await call_error(client, tool, project_id=project_id, **arguments)
        assert "NUL" in error


async def test_a_symlink_swapped_in_during_writes_never_redirects_them(owner: Owner) -> None:
    client, _, project_id = owner
    await call(client, "run_command", project_id=project_id, command="rm -f /tmp/x.txt; mkdir d")
    swapper = await call(
        client,
        "run_command",
        project_id=project_id,
        command="end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do "
        "rm -rf d; ln -sfn /tmp d; rm -f d; mkdir -p d; done",
        wait_s=0,
    )
    outcomes = {"written": 0, "refused": 0}
    with anyio.fail_after(60):
        for _ in range(150):
            result = await client.call_tool(
                "write_file", {"project_id": project_id, "path": "d/x.txt", "content": "x"}
            )
            outcomes["refused" if result.is_error else "written"] += 1
        while (
            await call(
                client, "read_command_output", execution_id=swapper["execution_id"], wait_s=10
            )
        )["finished"] is False:
            pass
    check = await call(
        client,
        "run_command",
        project_id=project_id,
        command="test -e /tmp/x.txt && echo LEAKED || echo clean",
    )
    assert check["stdout"] == "clean\n", outcomes
    assert outcomes["written"] + outcomes["refused"] == 150
