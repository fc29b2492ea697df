"""Finding 8: a path lock holds however another agent spells the path (``..``, a symlink)."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

Pair = tuple[Client, Client, str]


async def test_a_lock_cannot_be_walked_around_by_another_spelling_of_its_path(
    owner_and_member: Pair,
) -> None:
    alice, bob, project_id = owner_and_member
    await call(alice, "write_file", project_id=project_id, path="src/main.py", content="x = 1\n")
    await call(alice, "run_command", project_id=project_id, command="ln -s src link")
    await call(alice, "lock_path", project_id=project_id, path="src", ttl_s=600)
    spellings = ["/workspace/../workspace/src", "./src/../src", "link", "src/./"]
    for spelling in spellings:
        file = f"{spelling.rstrip('/')}/main.py"
        attempts = [
            ("write_file", {"path": file, "content": "hacked"}),
            ("edit_file", {"path": file, "edits": [{"old_text": "x = 1", "new_text": "x = 2"}]}),
            ("move_path", {"source": file, "destination": "stolen.py"}),
            ("delete_path", {"path": spelling, "recursive": True}),
        ]
        for tool, arguments in attempts:
            error = await call_error(bob, tool, project_id=project_id, **arguments)
            assert "locked by alice" in error or "cannot tell which file" in error, (
                tool,
                spelling,
                error,
            )
    content = await call(alice, "read_file", project_id=project_id, path="src/main.py")
    assert content["content"] == "x = 1\n"
    locks = await call(bob, "list_locks", project_id=project_id)
    assert [lock["path"] for lock in locks["locks"]] == ["src"]


async def test_locking_through_a_symlink_locks_what_it_points_to(owner_and_member: Pair) -> None:
    alice, bob, project_id = owner_and_member
    await call(alice, "write_file", project_id=project_id, path="real/a.txt", content="a")
    await call(alice, "run_command", project_id=project_id, command="ln -s real alias")
    locked = await call(alice, "lock_path", project_id=project_id, path="alias", ttl_s=600)
    assert locked["lock"]["path"] == "real"
    error = await call_error(
        bob, "write_file", project_id=project_id, path="real/a.txt", content="b"
    )
    assert "locked by alice" in error
