"""The terminal screen model: what a screen shows after the sequences programs write."""

from __future__ import annotations

from server.core.terminal_screen import Screen


def screen_after(data: str | bytes, cols: int = 10, rows: int = 4) -> Screen:
    screen = Screen(cols, rows)
    screen.feed(data.encode() if isinstance(data, str) else data)
    return screen


def test_text_wraps_at_the_edge_and_scrolls_at_the_bottom() -> None:
    screen = screen_after("0123456789abc\r\nline2\r\nline3\r\nline4\r\nline5")
    assert screen.lines() == ["line2", "line3", "line4", "line5"]
    assert screen.cursor == (3, 5)


def test_a_line_that_fills_the_width_wraps_only_when_more_comes() -> None:
    screen = screen_after("0123456789\r\nnext")
    assert screen.lines()[:2] == ["0123456789", "next"]


def test_cursor_positioning_and_erasing() -> None:
    screen = screen_after("hello world\r\nsecond line", cols=20, rows=3)
    screen.feed(b"\x1b[1;7HW\x1b[2;7H\x1b[K")
    assert screen.lines() == ["hello World", "second", ""]
    screen.feed(b"\x1b[1;3H\x1b[1K")
    assert screen.lines()[0] == "   lo World"  # up to and with the cursor
    screen.feed(b"\x1b[2J")
    assert screen.text() == ""
    screen.feed(b"\x1b[3;5Hx\x1b[A\x1b[2Dy\x1b[Cz\x1b[Hq")
    assert screen.lines() == ["q", "   y z", "    x"]


def test_backspace_and_carriage_return_overwrite() -> None:
    assert screen_after("abc\b\bX").lines()[0] == "aXc"
    assert screen_after("abcdef\rXY").lines()[0] == "XYcdef"
    assert screen_after("a\tb", cols=20).lines()[0] == "a       b"


def test_a_scroll_region_scrolls_only_its_lines() -> None:
    screen = screen_after("1\r\n2\r\n3\r\n4\r\n5", rows=5)
    screen.feed(b"\x1b[2;4r\x1b[4;1H\n")
    assert screen.lines() == ["1", "3", "4", "", "5"]
    screen.feed(b"\x1b[2;1H\x1bM")
    assert screen.lines() == ["1", "", "3", "4", "5"]
    screen.feed(b"\x1b[r\x1b[5;1H\n")  # the whole screen again
    assert screen.lines() == ["", "3", "4", "5", ""]


def test_inserting_and_deleting_characters_and_lines() -> None:
    screen = screen_after("abcdef\r\nsecond\r\nthird")
    screen.feed(b"\x1b[1;3H\x1b[2P")
    assert screen.lines()[0] == "abef"
    screen.feed(b"\x1b[2@")
    assert screen.lines()[0] == "ab  ef"
    screen.feed(b"\x1b[4h!\x1b[4l")  # insert mode pushes the rest right
    assert screen.lines()[0] == "ab!  ef"
    screen.feed(b"\x1b[2;1H\x1b[L")
    assert screen.lines() == ["ab!  ef", "", "second", "third"]
    screen.feed(b"\x1b[M\x1b[M")
    assert screen.lines() == ["ab!  ef", "third", "", ""]
    screen.feed(b"\x1b[1;2H\x1b[3X")
    assert screen.lines()[0] == "a    ef"


def test_the_alternate_screen_comes_and_goes_with_the_cursor() -> None:
    screen = screen_after("$ vim notes\r\n", cols=20)
    screen.feed(b'\x1b[?1049h\x1b[H\x1b[2J~\r\n~\r\n\x1b[4;1H"notes" 0L')
    assert screen.alternate
    assert screen.lines() == ["~", "~", "", '"notes" 0L']
    screen.feed(b"\x1b[?1049l")
    assert not screen.alternate
    assert screen.lines() == ["$ vim notes", "", "", ""]
    assert screen.cursor == (1, 0)


def test_wide_and_combining_characters_take_their_cells() -> None:
    screen = screen_after("日本語", cols=5)
    assert screen.lines()[:2] == ["日本", "語"]
    assert screen.cursor == (1, 2)
    screen = screen_after("e\u0301x")
    assert screen.lines()[0] == "e\u0301x"
    assert screen.cursor == (0, 2)
    screen = screen_after("日本\x1b[1;2Hx")  # overwriting half of a wide character
    assert screen.lines()[0] == " x本"


def test_utf8_split_across_writes_is_decoded_whole() -> None:
    screen = Screen(10, 2)
    for byte in "日é".encode():
        screen.feed(bytes([byte]))
    assert screen.lines()[0] == "日é"


def test_line_drawing_repeat_and_titles() -> None:
    screen = screen_after("\x1b(0lqk\x1b(Bx\x1b[3b", cols=20)
    assert screen.lines()[0] == "┌─┐xxxx"
    screen.feed(b"\x1b]0;my title\x07")
    assert screen.title == "my title"
    screen.feed(b"\x1b]2;other\x1b\\")
    assert screen.title == "other"


def test_unknown_and_ignored_sequences_leave_only_the_text() -> None:
    screen = screen_after(
        "\x1b[38;2;255;0;0mred\x1b[0m \x1b[?2004h\x1bP+q544e\x1b\\\x1b[>4;1m\x1b[?1000hok\x07",
        cols=20,
    )
    assert screen.lines()[0] == "red ok"


def test_modes_a_key_mapping_needs_are_tracked() -> None:
    screen = screen_after("\x1b[?1h\x1b[?25l")
    assert screen.application_cursor
    assert not screen.cursor_visible
    screen.feed(b"\x1b[?1l\x1b[?25h")
    assert not screen.application_cursor


def test_without_auto_wrap_the_last_column_is_overwritten() -> None:
    screen = screen_after("\x1b[?7l0123456789abc")
    assert screen.lines()[:2] == ["012345678c", ""]


def test_origin_mode_positions_relative_to_the_scroll_region() -> None:
    screen = screen_after("\x1b[2;3r\x1b[?6h\x1b[1;1Ha\x1b[9;1Hb", rows=4)
    assert screen.lines() == ["", "a", "b", ""]


def test_a_resize_keeps_the_cursor_line_and_cuts_or_pads_lines() -> None:
    screen = screen_after("1\r\n2\r\n3\r\n4 is long", cols=10, rows=4)
    screen.resize(4, 2)
    assert screen.lines() == ["3", "4 is"]
    assert screen.cursor == (1, 3)
    screen.resize(12, 3)
    assert screen.lines() == ["3", "4 is", ""]
    screen.feed(b"\r\n0123456789ab")
    assert screen.lines()[2] == "0123456789ab"


def test_a_reset_clears_everything() -> None:
    screen = screen_after("text\x1b[?1049h\x1b[2;3rmore\x1bc")
    assert (screen.text(), screen.alternate, screen.cursor) == ("", False, (0, 0))


def test_a_prompt_keeps_the_blanks_before_the_cursor() -> None:
    screen = screen_after(">>> ")
    assert screen.lines()[0] == ">>> "
    assert screen.text() == ">>> "
    screen.feed(b"\r\n\r\n   ")
    assert screen.text() == ">>>"  # blank rows at the bottom are left out
