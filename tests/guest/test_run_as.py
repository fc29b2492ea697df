"""``--run-as``: commands under a uid of their own, the API's files theirs, the agent apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from anyio.streams.stapled import StapledByteStream

from guest_runtime.agent.methods import TextEdit
from guest_runtime.bundle import write_agent_zipapp
from guest_runtime.client import GuestClient
from guest_runtime.protocol import ExecExit, ExecOutput, TermOutput

pytestmark = pytest.mark.anyio

COMMANDS = (1000, 1000)


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A workspace uid 1000 can reach (pytest's own directories are private to root)."""
    if os.geteuid() != 0:
        pytest.skip("--run-as needs the agent to be root; these tests run as an ordinary user")
    top = Path(tempfile.mkdtemp(prefix="pvm-run-as-"))
    top.chmod(0o755)
    root = top / "workspace"
    root.mkdir()
    (root / "old").mkdir()
    (root / "old" / "left-by-root.txt").write_text("from before --run-as")
    try:
        yield root
    finally:
        shutil.rmtree(top)


@pytest.fixture
async def guest(workspace: Path, tmp_path: Path) -> AsyncIterator[tuple[GuestClient, int]]:
    """The agent as root with ``--run-as 1000:1000``; yields its client and its pid."""
    zipapp = write_agent_zipapp(tmp_path / "agent")
    process = await anyio.open_process(
        [sys.executable, str(zipapp), "--root", str(workspace), "--run-as", "1000:1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        async with GuestClient(StapledByteStream(process.stdin, process.stdout)) as client:
            await client.hello()
            yield client, process.pid
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


async def run(client: GuestClient, command: str) -> tuple[str, ExecExit]:
    handle = await client.start_exec(command)
    output = b""
    with anyio.fail_after(30):
        async for event in handle.events():
            if isinstance(event, ExecOutput):
                output += event.data
    assert handle.exit is not None
    return output.decode(), handle.exit


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


async def test_commands_run_as_the_given_uid_with_no_other_groups(
    guest: tuple[GuestClient, int], workspace: Path
) -> None:
    client, _ = guest
    assert client.info is not None
    assert (client.info.uid, client.info.command_uid, client.info.command_gid) == (0, 1000, 1000)
    output, _ = await run(client, 'id -u; id -g; id -G; echo "$HOME $USER"')
    assert output.splitlines() == ["1000", "1000", "1000", f"{workspace} pvm"]


async def test_the_workspace_and_what_the_api_writes_belong_to_the_command_user(
    guest: tuple[GuestClient, int], workspace: Path
) -> None:
    client, _ = guest
    # Handed over when the agent started, at every depth.
    assert owner(workspace) == COMMANDS
    assert owner(workspace / "old" / "left-by-root.txt") == COMMANDS
    await client.write_file("deep/er/api.txt", b"one\n")
    await client.mkdir("made")
    await client.edit_file("deep/er/api.txt", [TextEdit("one", "two")])
    for path in ("deep", "deep/er", "deep/er/api.txt", "made"):
        assert owner(workspace / path) == COMMANDS, path
    output, exit_info = await run(client, "echo three >> deep/er/api.txt && cat deep/er/api.txt")
    assert (output, exit_info.exit_code) == ("two\nthree\n", 0)


async def test_a_command_can_neither_read_nor_signal_the_agent(
    guest: tuple[GuestClient, int],
) -> None:
    client, agent_pid = guest
    output, _ = await run(
        client,
        f"ls /proc/{agent_pid}/fd >/dev/null 2>&1 && echo read-fds; "
        f"kill -0 {agent_pid} 2>/dev/null && echo signalled; "
        "ls /proc/self/fd",
    )
    # Its own descriptors are its stdio (and ls's directory): nothing of the agent's.
    assert output.split() == ["0", "1", "2", "3"]
    assert (await client.stat(".")).exists  # and the agent is still there


async def test_a_terminal_runs_as_the_command_user_on_a_pty_of_its_own(
    guest: tuple[GuestClient, int], workspace: Path
) -> None:
    client, agent_pid = guest
    handle = await client.open_terminal(
        f'id -u; id -G; stat -c %u "$(tty)"; kill -0 {agent_pid} 2>/dev/null && echo signalled; '
        'echo "$HOME $USER"'
    )
    output = b""
    with anyio.fail_after(30):
        async for event in handle.events():
            if isinstance(event, TermOutput):
                output += event.data
    assert output.decode().split("\r\n")[:-1] == ["1000", "1000", "1000", f"{workspace} pvm"]
    assert handle.exit is not None
    closed = await client.open_terminal("sleep 300")
    assert (await closed.close(grace_s=1)).closed  # the agent, root, still ends its programs
