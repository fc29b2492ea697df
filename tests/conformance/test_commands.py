"""Commands: exit codes, stdin, env, cwd, timeouts, cancellation, streaming and truncation."""

from __future__ import annotations

import anyio
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.errors import PathNotFound, PathOutsideWorkspace

from .running import LIST_PROCESSES, run

pytestmark = pytest.mark.anyio


async def test_exit_codes_and_both_streams_are_reported(guest: GuestClient) -> None:
    exit_info, out, err, _ = await run(guest, "echo out; echo err >&2; exit 3")
    assert (exit_info.exit_code, out, err) == (3, b"out\n", b"err\n")
    exit_info, _, _, _ = await run(guest, "true")
    assert exit_info.exit_code == 0
    exit_info, _, err, _ = await run(guest, "no-such-program-here")
    assert exit_info.exit_code == 127
    assert b"not found" in err


async def test_argv_commands_run_without_a_shell(guest: GuestClient) -> None:
    exit_info, out, _, _ = await run(guest, ["printf", "%s|", "a b", "$HOME"])
    assert exit_info.exit_code == 0
    assert out == b"a b|$HOME|"


async def test_stdin_env_and_cwd_are_applied(guest: GuestClient) -> None:
    await guest.mkdir("sub/dir")
    _, out, _, _ = await run(
        guest,
        'cat; echo "[$GREETING]"; pwd',
        stdin=b"from stdin\n",
        env={"GREETING": "hello there"},
        cwd="sub/dir",
    )
    lines = out.decode().splitlines()
    assert lines[0] == "from stdin"
    assert lines[1] == "[hello there]"
    assert lines[2].endswith("/sub/dir")


async def test_a_cwd_outside_the_workspace_or_missing_is_refused(guest: GuestClient) -> None:
    with pytest.raises(PathOutsideWorkspace):
        await guest.start_exec("pwd", cwd="../..")
    with pytest.raises(PathNotFound):
        await guest.start_exec("pwd", cwd="does/not/exist")


async def test_a_timeout_kills_the_whole_process_tree(guest: GuestClient) -> None:
    exit_info, _, _, _ = await run(guest, "sh -c 'sleep 100 & sleep 100'", timeout_s=2)
    assert exit_info.timed_out
    assert exit_info.duration_ms >= 2000  # never killed before its time
    _, listing, _, _ = await run(guest, LIST_PROCESSES)
    assert b"sleep 100" not in listing


async def test_a_signal_cancels_a_running_command(guest: GuestClient) -> None:
    handle = await guest.start_exec("echo started; sleep 300")
    with anyio.fail_after(30):
        async for event in handle.events():
            if getattr(event, "data", b"") == b"started\n":
                await handle.signal("KILL")
    assert handle.exit is not None
    assert handle.exit.killed
    assert handle.exit.signal == 9


async def test_output_streams_in_order_with_increasing_sequence_numbers(
    guest: GuestClient,
) -> None:
    _, out, _, chunks = await run(
        guest, "for i in $(seq 1 2000); do echo line $i; done; echo done >&2"
    )
    assert out.decode().splitlines() == [f"line {i}" for i in range(1, 2001)]
    sequence = [chunk.seq for chunk in chunks]
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == len(sequence)


async def test_output_beyond_the_limit_is_dropped_and_marked(guest: GuestClient) -> None:
    exit_info, out, _, chunks = await run(
        guest,
        "head -c 5000000 /dev/zero | tr '\\0' 'a'; echo; echo THE-END",
        output_limit=10_000,
        tail_limit=100,
    )
    assert exit_info.exit_code == 0
    assert exit_info.truncated
    assert exit_info.stdout_bytes == 5_000_000 + len("\nTHE-END\n")
    head = b"".join(c.data for c in chunks if not c.tail)
    assert head == b"a" * 10_000
    [tail] = [c for c in chunks if c.tail]
    assert tail.data.endswith(b"THE-END\n")
    assert len(tail.data) == 100
    assert tail.skipped == exit_info.stdout_bytes - 10_000 - 100
    assert len(out) == 10_100


async def test_input_can_be_fed_while_a_command_runs(guest: GuestClient) -> None:
    handle = await guest.start_exec("while read line; do echo got:$line; done", stdin_open=True)
    await handle.write_stdin(b"one\n")
    await handle.write_stdin(b"two\n", eof=True)
    output = b""
    with anyio.fail_after(30):
        async for event in handle.events():
            output += getattr(event, "data", b"")
    assert output == b"got:one\ngot:two\n"
    assert handle.exit is not None
    assert handle.exit.exit_code == 0


async def test_commands_run_concurrently_on_one_channel(guest: GuestClient) -> None:
    """Each command waits until all eight have started: they can only finish together."""
    results: dict[int, tuple[int | None, bytes]] = {}
    await guest.mkdir("started")

    async def one(number: int) -> None:
        barrier = (
            f"touch started/{number}; "
            "while [ $(ls started | wc -l) -lt 8 ]; do sleep 0.01; done; "
            f"echo {number}"
        )
        exit_info, out, _, _ = await run(guest, barrier, timeout_s=60)
        results[number] = (exit_info.exit_code, out)

    async with anyio.create_task_group() as group:
        for number in range(8):
            group.start_soon(one, number)
    assert results == {n: (0, f"{n}\n".encode()) for n in range(8)}


async def test_commands_run_with_the_workspace_as_home_and_cwd(guest: GuestClient) -> None:
    _, out, _, _ = await run(guest, 'pwd; echo "$HOME"')
    cwd, home = out.decode().split()
    info = await guest.hello()
    assert cwd == info.root
    assert home == info.root
