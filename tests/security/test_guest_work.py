"""Work an agent can ask the guest for, bounded: edits, searches, appends, deep trees, env.

Issue 9, findings 1 (edit caps, on every driver), 5, 7, 9 and 22.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import anyio
import pytest
from mcp import Client

from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

Owner = tuple[Client, ServerHandle, str]

# Prints the pid of a search worker of this workspace once one runs (waiting for it), or, with
# "--now", whether one runs at all: the only way to see the worker is from inside the VM.
FIND_WORKER = """
import os, sys
here = os.path.realpath(".")
def workers():
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().decode().split("\\0")
        except OSError:
            continue
        if "--search-worker" in argv and here in argv:
            yield pid
if "--now" in sys.argv:
    print("workers:", " ".join(workers()) or "none")
    sys.exit(0)
while True:
    for pid in workers():
        print("worker", pid)
        sys.exit(0)
"""


async def finish(client: Client, execution_id: str) -> dict[str, Any]:
    """Wait (in real round trips, each bounded by wait_s) for an execution to end."""
    with anyio.fail_after(60):
        while True:
            output = await call(client, "read_command_output", execution_id=execution_id, wait_s=10)
            if output["finished"]:
                return output


# -- finding 22 -------------------------------------------------------------------------------


async def test_an_env_value_with_a_nul_byte_is_refused_for_what_it_is(owner: Owner) -> None:
    client, _, project_id = owner
    error = await call_error(
        client,
        "run_command",
        project_id=project_id,
        command="true",
        env={"GOOD": "fine", "BAD": "a\x00b"},
    )
    assert "BAD contains a NUL" in error
    assert "'='" not in error


# -- finding 1 --------------------------------------------------------------------------------


async def test_edit_file_refuses_unbounded_work_and_cuts_a_long_diff(owner: Owner) -> None:
    client, _, project_id = owner
    await call(
        client, "run_command", project_id=project_id, command="yes a | head -c 4194304 > big.txt"
    )
    alternating = [
        {"old_text": "ab"[i % 2], "new_text": "ba"[i % 2], "replace_all": True} for i in range(2000)
    ]
    with anyio.fail_after(30):
        error = await call_error(
            client,
            "edit_file",
            project_id=project_id,
            path="big.txt",
            edits=alternating,
            dry_run=True,
        )
    assert "2000 edits given; at most 200 are accepted" in error
    huge_texts = [{"old_text": "a" * 600_000, "new_text": "b" * 600_000}]
    error = await call_error(
        client, "edit_file", project_id=project_id, path="big.txt", edits=huge_texts
    )
    assert "at most 1048576 bytes" in error
    # The largest diff one call can produce (every line changes) comes back cut, and quickly.
    with anyio.fail_after(60):
        preview = await call(
            client,
            "edit_file",
            project_id=project_id,
            path="big.txt",
            edits=[{"old_text": "a", "new_text": "b", "replace_all": True}],
            dry_run=True,
        )
    assert preview["replacements"] == 2 * 1024 * 1024
    assert preview["diff_truncated"] is True
    assert preview["diff"].startswith("--- a/big.txt\n+++ b/big.txt\n@@ -1,2097152 +1,2097152 @@\n")
    assert preview["diff"].endswith("read the file to see the rest\n")
    assert len(preview["diff"].encode()) < 256 * 1024 + 200
    unchanged = await call(client, "read_file", project_id=project_id, path="big.txt", limit=1)
    assert unchanged["content"] == "a\n"


# -- finding 5 --------------------------------------------------------------------------------

DEPTH = 1100


async def test_a_deep_directory_tree_does_not_brick_the_project(owner: Owner) -> None:
    client, _, project_id = owner
    nested = "/".join(["d"] * DEPTH)
    await call(
        client,
        "run_command",
        project_id=project_id,
        command=f"mkdir -p {nested} && echo needle > {nested}/bottom.txt",
    )
    # Each call that walks or measures the workspace still works.
    await call(client, "write_file", project_id=project_id, path="after.txt", content="x")
    ran = await call(client, "run_command", project_id=project_id, command="echo ran")
    assert ran["stdout"] == "ran\n"
    usage = (await call(client, "get_project", project_id=project_id))["usage"]
    assert usage.get("note") is None, usage
    assert usage["workspace_bytes"] > 0
    listing = await call(
        client, "list_files", project_id=project_id, recursive=True, max_entries=5000
    )
    assert f"{nested}/bottom.txt" in {entry["path"] for entry in listing["entries"]}
    found = await call(client, "search_files", project_id=project_id, pattern="needle")
    assert [match["path"] for match in found["matches"]] == [f"{nested}/bottom.txt"]
    await call(client, "delete_path", project_id=project_id, path="d", recursive=True)
    listing = await call(client, "list_files", project_id=project_id)
    assert {entry["path"] for entry in listing["entries"]} == {"after.txt"}
    # A project left with such a tree restarts, and can be deleted.
    await call(client, "run_command", project_id=project_id, command=f"mkdir -p {nested}")
    await call(client, "stop_project", project_id=project_id)
    await call(client, "start_project", project_id=project_id)
    again = await call(
        client, "list_files", project_id=project_id, recursive=True, max_entries=5000
    )
    assert len(again["entries"]) == DEPTH + 1
    assert (await call(client, "delete_project", project_id=project_id))["deleted"] is True


# -- finding 7 --------------------------------------------------------------------------------


async def test_a_runaway_regex_is_stopped_while_the_project_stays_responsive(
    owner: Owner,
) -> None:
    client, _, project_id = owner
    await call(client, "write_file", project_id=project_id, path="evil.txt", content="a" * 38 + "!")
    outcome: dict[str, str] = {}

    async def search() -> None:
        outcome["error"] = await call_error(
            client,
            "search_files",
            project_id=project_id,
            pattern="^(a+)+$",
            regex=True,
            timeout_s=4,
        )

    async with anyio.create_task_group() as group:
        group.start_soon(search)
        # A command in the same project runs while the search does: it sees the search's
        # worker process and ends at once.
        with anyio.fail_after(20):
            seen = await call(
                client,
                "run_command",
                project_id=project_id,
                command=f"python3 -c '{FIND_WORKER}'",
            )
        assert seen["stdout"].startswith("worker "), seen
        assert "error" not in outcome, "the search ended before the command could run"
    assert "did not finish within 4s and was stopped" in outcome["error"]
    left = await call(
        client, "run_command", project_id=project_id, command=f"python3 -c '{FIND_WORKER}' --now"
    )
    assert left["stdout"] == "workers: none\n"
    found = await call(client, "search_files", project_id=project_id, pattern="aaa!")
    assert [match["path"] for match in found["matches"]] == ["evil.txt"]


# -- finding 9 --------------------------------------------------------------------------------


async def test_an_append_keeps_what_a_command_writes_through_an_open_descriptor(
    owner: Owner,
) -> None:
    client, _, project_id = owner
    started = await call(
        client,
        "run_command",
        project_id=project_id,
        command='exec 3>>log.txt; while read n; do echo "command $n" >&3; done',
        keep_stdin_open=True,
        wait_s=0,
    )
    execution_id = started["execution_id"]
    for n in range(1, 21):
        # Line n of the command is written after append n-1 returned.
        await call(client, "send_input", execution_id=execution_id, data=f"{n}\n")
        await call(
            client,
            "write_file",
            project_id=project_id,
            path="log.txt",
            content=f"api {n}\n",
            append=True,
        )
    await call(client, "send_input", execution_id=execution_id, data="", eof=True)
    assert (await finish(client, execution_id))["exit_code"] == 0
    log = await call(client, "read_file", project_id=project_id, path="log.txt")
    expected = [f"command {n}" for n in range(1, 21)] + [f"api {n}" for n in range(1, 21)]
    assert sorted(log["content"].splitlines()) == sorted(expected)


async def test_a_one_byte_append_to_a_huge_file_is_as_quick_as_to_a_small_one(
    owner: Owner,
) -> None:
    client, _, project_id = owner
    await call(
        client,
        "run_command",
        project_id=project_id,
        command="truncate -s 256M huge.bin && printf x > small.bin",
    )
    took: dict[str, list[float]] = {"huge.bin": [], "small.bin": []}
    hashes = set()
    for round_number in range(6):
        for name, samples in took.items():
            began = time.perf_counter()
            written = await call(
                client, "write_file", project_id=project_id, path=name, content="y", append=True
            )
            if round_number:  # the first round warms up (the usage measurement, caches)
                samples.append(time.perf_counter() - began)
            hashes.add(written["sha256"])
    huge, small = statistics.median(took["huge.bin"]), statistics.median(took["small.bin"])
    assert huge < 4 * small, f"appending to 256 MiB took {huge:.3f}s, to 1 byte {small:.3f}s"
    assert hashes == {None}  # an append does not hash the whole file again
    size = (await call(client, "list_files", project_id=project_id, path="huge.bin"))["entries"]
    assert size[0]["size"] == 256 * 1024 * 1024 + 6
