"""Terminals: a program on a PTY of the size asked for, input, resize, exit, hang-up, and
terminals ending with the channel that opened them."""

from __future__ import annotations

import anyio
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable, PathOutsideWorkspace
from vm_drivers.base import VMDriver

from .pty_reader import PtyReader
from .running import LIST_PROCESSES, run

pytestmark = pytest.mark.anyio

# Prints the terminal's size at start and at every SIGWINCH, until a line is typed.
WATCH_SIZE = (
    "import os, signal, sys\n"
    "show = lambda *_: os.write(1, b'size %dx%d\\n' % tuple(os.get_terminal_size()))\n"
    "signal.signal(signal.SIGWINCH, show)\n"
    "show()\n"
    "sys.stdin.readline()\n"
)


async def test_a_terminal_gives_its_program_a_tty_of_the_size_asked_for(
    guest: GuestClient,
) -> None:
    await guest.mkdir("sub")
    handle = await guest.open_terminal(
        'tty; stty size; echo "$TERM"; test -t 0 && echo interactive; pwd; echo "[$GREETING]"',
        cols=100,
        rows=30,
        cwd="sub",
        env={"GREETING": "hello there"},
    )
    reader = PtyReader(handle)
    exit_info = await reader.exit()
    lines = bytes(reader.output).decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/"), lines
    assert lines[1:3] == ["30 100", "xterm-256color"]
    assert lines[3] == "interactive"
    assert lines[4].endswith("/sub")
    assert lines[5] == "[hello there]"
    assert (exit_info.exit_code, exit_info.closed, exit_info.killed) == (0, False, False)


async def test_typed_input_is_echoed_and_the_exit_status_is_reported(guest: GuestClient) -> None:
    handle = await guest.open_terminal("read line; echo got:$line; exit 3")
    reader = PtyReader(handle)
    assert await handle.write(b"hello\r") == 6  # Enter sends a carriage return
    output = await reader.until(b"got:hello")
    assert b"hello\r\n" in output  # the terminal's own echo, before the program's answer
    exit_info = await reader.exit()
    assert exit_info.exit_code == 3
    assert exit_info.output_bytes == len(reader.output)


async def test_a_resize_reaches_the_program_as_sigwinch(guest: GuestClient) -> None:
    handle = await guest.open_terminal(["python3", "-c", WATCH_SIZE], cols=80, rows=24)
    reader = PtyReader(handle)
    await reader.until(b"size 80x24")
    await handle.resize(132, 43)
    await reader.until(b"size 132x43")
    await handle.write(b"\r")
    assert (await reader.exit()).exit_code == 0


async def test_the_login_shell_runs_commands_and_exits_on_a_hang_up(guest: GuestClient) -> None:
    handle = await guest.open_terminal()
    reader = PtyReader(handle)
    await handle.write(b"echo shell-$((6 * 7))\r")
    await reader.until(b"shell-42")
    closed = await handle.close(grace_s=15)  # a shell exits at once; a loaded host may be slow
    assert closed.closed
    assert not closed.killed
    assert closed.signal == 1 or closed.exit_code == 129  # SIGHUP, as a shell reports it
    assert (await reader.exit()).exit_code == closed.exit_code


async def test_closing_kills_what_ignores_the_hang_up_after_the_grace(
    guest: GuestClient,
) -> None:
    handle = await guest.open_terminal("trap '' HUP; echo ready; sleep 317.25")
    reader = PtyReader(handle)
    await reader.until(b"ready")
    closed = await handle.close(grace_s=0.5)
    assert (closed.closed, closed.killed, closed.signal) == (True, True, 9)
    _, listing, _, _ = await run(guest, LIST_PROCESSES)
    assert b"sleep 317.25" not in listing  # neither the shell nor its child


async def test_what_a_program_leaves_holding_its_terminal_ends_with_it(guest: GuestClient) -> None:
    # The kernel hangs up the foreground group when the session leader exits; this child
    # ignores that (from its start: it inherits the ignored signal), so it holds the terminal.
    handle = await guest.open_terminal("trap '' HUP; sleep 318.5 & echo left-behind")
    reader = PtyReader(handle)
    exit_info = await reader.exit()
    assert (exit_info.exit_code, exit_info.killed) == (0, True)
    assert b"left-behind" in reader.output
    _, listing, _, _ = await run(guest, LIST_PROCESSES)
    assert b"sleep 318.5" not in listing
    handle = await guest.open_terminal("echo alone")
    assert not (await PtyReader(handle).exit()).killed  # nothing left: nothing killed


async def test_output_streams_in_order_with_increasing_sequence_numbers(
    guest: GuestClient,
) -> None:
    handle = await guest.open_terminal("seq 1 20000")
    reader = PtyReader(handle)
    await reader.exit()
    assert bytes(reader.output).decode().split("\r\n")[:-1] == [str(i) for i in range(1, 20001)]
    assert [chunk.seq for chunk in reader.chunks] == list(range(len(reader.chunks)))


async def test_a_cwd_outside_the_workspace_is_refused(guest: GuestClient) -> None:
    with pytest.raises(PathOutsideWorkspace):
        await guest.open_terminal("pwd", cwd="../..")


async def test_a_new_channel_ends_the_terminals_of_the_old_one(driver: VMDriver, vm: str) -> None:
    async with GuestClient(await driver.open_channel(vm)) as first:
        await first.hello()
        handle = await first.open_terminal("echo up; sleep 300 # opened-through-the-first")
        reader = PtyReader(handle)
        await reader.until(b"up")
        async with GuestClient(await driver.open_channel(vm)) as second:
            await second.hello()
            with pytest.raises(GuestUnreachable):
                await reader.exit()
            with anyio.fail_after(30):
                while True:
                    _, listing, _, _ = await run(second, LIST_PROCESSES)
                    if b"opened-through-the-first" not in listing:
                        break
