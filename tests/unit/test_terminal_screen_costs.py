"""A hostile program's output costs the screen model bounded memory and time.

The screen is computed on the server's event loop from whatever a terminal printed, so a
crafted stream must not make it grow without end or do far more work than its bytes.
"""

from __future__ import annotations

import time

from server.core.terminal_screen import Screen

# The most output a terminal keeps for its screen to catch up on.
KEPT_OUTPUT = 512 * 1024


def test_endless_combining_marks_keep_one_cell_small() -> None:
    screen = Screen(80, 24)
    screen.feed(b"a" + "\u0301".encode() * (KEPT_OUTPUT // 2))
    longest = max(len(cell) for row in screen.grid for cell in row)
    assert longest <= 32
    assert screen.lines()[0].startswith("a\u0301")


def test_an_unending_control_sequence_does_not_grow_the_parser() -> None:
    screen = Screen(80, 24)
    screen.feed(b"\x1b[" + b" " * KEPT_OUTPUT)
    assert len(screen._intermediates) <= 8
    screen.feed(b"!pok")  # and the stream goes on normally once the sequence ends
    assert screen.lines()[0] == "ok"


def test_tabs_with_a_huge_count_cost_no_more_than_the_line() -> None:
    sequence = b"\x1b[9999I\x1b[9999Z"
    screen = Screen(80, 24)
    started = time.process_time()
    screen.feed(sequence * (64 * 1024 // len(sequence)))
    # Before the fix this took about 30 s of CPU (9999 steps a sequence); now well under 1.
    assert time.process_time() - started < 5
    screen.feed(b"\x1b[9999I")
    assert screen.cursor == (0, 79)


def test_repeat_draws_at_most_one_line_of_the_character() -> None:
    screen = Screen(10, 4)
    screen.feed("\u4e00\x1b[9999b".encode())
    # The character and 10 repeats (a line's worth of cells), 5 wide ones to a line.
    assert screen.lines()[:3] == ["\u4e00" * 5, "\u4e00" * 5, "\u4e00"]
    assert screen.lines()[3] == ""
