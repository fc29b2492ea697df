"""A terminal's output buffer, its screen when output was dropped, plain text, and keys."""

from __future__ import annotations

import pytest

from server.core.live_terminal import LiveTerminal, OutputBuffer, complete_utf8, readable_text
from server.core.terminal_keys import key_bytes, needs_cursor_mode
from server.domain.errors import InvalidInput
from server.domain.models import Execution, ExecutionStatus


def terminal(cols: int = 20, rows: int = 3) -> LiveTerminal:
    execution = Execution(
        execution_id="exe_1",
        project_id="prj_1",
        agent_id="alice",
        command="bash -l",
        kind="terminal",
        status=ExecutionStatus.RUNNING,
    )
    return LiveTerminal(execution, cols, rows, idle_timeout_s=60)


def test_the_buffer_keeps_the_newest_output_and_says_where_it_starts() -> None:
    buffer = OutputBuffer(capacity=10)
    for _ in range(5):
        buffer.append(b"0123456789")
    assert buffer.end == 50
    assert 10 <= buffer.end - buffer.start <= 20
    first, data = buffer.read(0)
    assert first == buffer.start
    assert data == (b"0123456789" * 5)[first:]
    assert buffer.read(45) == (45, b"56789")
    assert buffer.read(99) == (50, b"")


def test_output_lost_on_the_way_is_a_gap_in_the_offsets() -> None:
    buffer = OutputBuffer(capacity=100)
    buffer.append(b"abc")
    buffer.append(b"xyz", skipped=1000)
    assert (buffer.start, buffer.end) == (1003, 1006)
    assert buffer.read(0) == (1003, b"xyz")


@pytest.mark.anyio
async def test_the_screen_starts_again_from_what_is_kept_at_the_size_it_had_then() -> None:
    live = terminal(cols=20, rows=3)
    live.output = OutputBuffer(capacity=8)
    live.add_output(b"first\r\n")
    live.resized(10, 2)
    live.add_output(b"0123456789" * 3 + b"\r\nlast")
    screen = await live.snapshot()
    assert (screen.cols, screen.rows) == (10, 2)
    assert screen.text.split("\n")[-1] == "last"
    live.resized(12, 2)
    assert (await live.snapshot()).cols == 12


@pytest.mark.anyio
async def test_the_screen_resizes_where_the_program_did() -> None:
    live = terminal(cols=5, rows=2)
    live.add_output(b"abcdefg")  # wraps at 5
    live.resized(10, 2)
    live.add_output(b"\r\n0123456789")
    assert (await live.snapshot()).text.split("\n") == ["fg", "0123456789"]


def test_plain_text_has_no_escapes_and_applies_backspaces() -> None:
    raw = "\x1b[?2004h$ ab\b \bc\r\n\x1b[1;31mred\x1b[0m\x1b]0;title\x07 done\r\n"
    assert readable_text(raw) == "$ ac\nred done\n"


def test_a_utf8_character_cut_at_the_end_waits_for_the_rest() -> None:
    data = "aé日".encode()
    assert complete_utf8(data) == len(data)
    assert complete_utf8(data[:-1]) == len("aé".encode())
    assert complete_utf8(data[:-2]) == len("aé".encode())
    assert complete_utf8(b"") == 0


def test_keys_are_the_bytes_an_xterm_sends() -> None:
    assert key_bytes("enter") == b"\r"
    assert key_bytes("Ctrl+C") == b"\x03"
    assert key_bytes("ctrl-d") == b"\x04"
    assert key_bytes("up") == b"\x1b[A"
    assert key_bytes("up", application_cursor=True) == b"\x1bOA"  # as vim asks for
    assert key_bytes("alt-b") == b"\x1bb"
    assert key_bytes("PgDn") == b"\x1b[6~"
    assert needs_cursor_mode(["text", "left"])
    assert not needs_cursor_mode(["enter"])
    with pytest.raises(InvalidInput, match="unknown key 'hyper'; the keys are"):
        key_bytes("hyper")


@pytest.mark.anyio
async def test_drawing_a_costly_screen_leaves_the_event_loop_free() -> None:
    """A screen of the largest size redrawn by every 4-byte sequence costs seconds to draw; the
    drawing happens in a worker thread, so the event loop keeps serving everyone else."""
    import anyio

    live = terminal(cols=500, rows=200)
    live.add_output(b"\x1b[2J" * 20_000)  # clear the whole screen, 20,000 times
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        began = anyio.current_time()
        await live.snapshot()
        took = anyio.current_time() - began
        group.cancel_scope.cancel()
    assert took > 0.1, f"too cheap to tell ({took:.2f}s): make the output costlier"
    assert ticks >= took / 0.01 / 4, (ticks, took)
