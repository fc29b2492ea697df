"""A small terminal emulator: the text a terminal's screen shows, from the bytes written to it.

Enough of xterm (what ``TERM=xterm-256color`` promises) for shells, REPLs and full-screen
programs such as vim, top and less: UTF-8 with wide and combining characters, cursor movement,
erasing, inserting and deleting characters and lines, scroll regions, the alternate screen,
auto-wrap, tab stops, saved cursors, origin mode, repeat, and the DEC line-drawing set.
Colours and attributes are parsed and dropped (the screen is text), and so is whatever else it
does not know: it never fails on its input. Standard library only.

A cell holds its character (with any combining marks); the right half of a wide character is
the empty string, so a row's text is its cells joined.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Screen"]

# Characters that end a run of printable text in the ground state.
_SPECIAL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The DEC special graphics set (ESC ( 0), as line drawing in Unicode.
_DEC_GRAPHICS = str.maketrans(
    "`abcdefghijklmnopqrstuvwxyz{|}~",
    "◆▒␉␌␍␊°±␤␋┘┐┌└┼⎺⎻─⎼⎽├┤┴┬│≤≥π≠£·",
)
_MAX_PARAM = 9999
# Past these, a crafted stream would only grow memory and time: what is beyond is dropped.
_MAX_MARKS = 16  # combining marks kept on one cell
_MAX_INTERMEDIATES = 4  # a CSI's intermediate characters (real ones have one)


@dataclass
class _Saved:
    x: int = 0
    y: int = 0
    origin: bool = False
    charsets: tuple[str, str] = ("B", "B")
    shift: int = 0


def _fit(row: list[str], cols: int) -> list[str]:
    """A row cut or padded to ``cols`` cells; a wide character cut in half is blanked."""
    fitted = (row + [" "] * cols)[:cols]
    if len(row) > cols and row[cols] == "":
        fitted[-1] = " "
    return fitted


def _width(char: str) -> int:
    """Cells a character takes: 0 for a combining mark, 2 for a wide one, else 1."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


class Screen:
    """Feed it what a program wrote (:meth:`feed`); read the screen (:meth:`lines`)."""

    def __init__(self, cols: int = 80, rows: int = 24) -> None:
        self.cols = max(1, cols)
        self.rows = max(1, rows)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.reset()

    def reset(self) -> None:
        self.main = self._blank_grid()
        self.grid = self.main
        self.alternate = False
        self.x = self.y = 0
        self.wrap_pending = False
        self.top, self.bottom = 0, self.rows - 1
        self.autowrap = True
        self.origin = False
        self.insert = False
        self.cursor_visible = True
        self.application_cursor = False
        self.charsets = ["B", "B"]
        self.shift = 0
        self.title = ""
        self.tabs = set(range(0, self.cols, 8))
        self.saved = _Saved()
        self._saved_main = _Saved()
        self._last = " "
        self._state = "ground"
        self._params = ""
        self._intermediates = ""
        self._string = ""
        self._string_escape = False
        self._charset_slot = 0

    # -- reading ------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """Every row of the screen as text, trailing blanks dropped, except those before the
        cursor on its row (a prompt keeps its space: ``>>> ``)."""
        lines = ["".join(row).rstrip() for row in self.grid]
        row = self.grid[self.y]
        lines[self.y] = "".join(row[: self.x]) + "".join(row[self.x :]).rstrip()
        return lines

    def text(self) -> str:
        """The screen's rows, newline-separated, without the blank rows at the bottom."""
        lines = self.lines()
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines)

    @property
    def cursor(self) -> tuple[int, int]:
        """(row, column), 0-based."""
        return self.y, self.x

    # -- size ---------------------------------------------------------------------------------

    def resize(self, cols: int, rows: int) -> None:
        """A new size: rows go from the top when the cursor would fall off the bottom (as in
        xterm); lines are cut or padded, never reflowed."""
        cols, rows = max(1, cols), max(1, rows)
        drop = max(0, self.y + 1 - rows)
        for grid in (self.main, self.grid) if self.alternate else (self.grid,):
            if grid is self.grid:
                del grid[:drop]
            del grid[rows:]
            grid.extend([" "] * cols for _ in range(rows - len(grid)))
            grid[:] = [_fit(row, cols) for row in grid]
        self.cols, self.rows = cols, rows
        self.y -= drop
        self.top, self.bottom = 0, rows - 1
        self.tabs = {t for t in self.tabs if t < cols} | set(range(0, cols, 8))
        self.x = min(self.x, cols - 1)
        self.y = min(self.y, rows - 1)
        self.wrap_pending = False

    # -- input --------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take what the program wrote (any split of it: UTF-8 sequences may be cut)."""
        self.feed_text(self._decoder.decode(data))

    def feed_text(self, text: str) -> None:
        index, end = 0, len(text)
        while index < end:
            if self._state == "ground":
                special = _SPECIAL.search(text, index)
                stop = special.start() if special else end
                if stop > index:
                    self._print(text[index:stop])
                    index = stop
                    continue
            self._char(text[index])
            index += 1

    # -- printing -----------------------------------------------------------------------------

    def _print(self, run: str) -> None:
        charset = self.charsets[self.shift]
        if charset == "0":
            run = run.translate(_DEC_GRAPHICS)
        if run.isascii() and not self.insert:
            self._print_ascii(run)
        else:
            for char in run:
                self._put(char)
        self._last = run[-1]

    def _print_ascii(self, run: str) -> None:
        """The common case, a slice at a time: ASCII, replacing what is there."""
        while run:
            if self.wrap_pending:
                self._wrap()
            row = self.grid[self.y]
            room = self.cols - self.x
            piece, run = run[:room], run[room:]
            self._clear_wide_edges(row, self.x, self.x + len(piece))
            row[self.x : self.x + len(piece)] = piece
            self.x += len(piece)
            if self.x >= self.cols:
                self.x = self.cols - 1
                if self.autowrap:
                    self.wrap_pending = True
                elif run:
                    row[self.x] = run[-1]  # without auto-wrap the rest lands in the last column
                    run = ""

    def _put(self, char: str) -> None:
        width = _width(char)
        row = self.grid[self.y]
        if width == 0:
            # A combining mark joins the character before the cursor.
            x = self.x if self.wrap_pending else self.x - 1
            while x > 0 and row[x] == "":
                x -= 1
            if x >= 0 and len(row[x]) <= _MAX_MARKS:
                row[x] += char
            return
        if self.wrap_pending or (width == 2 and self.x == self.cols - 1 and self.cols > 1):
            if self.autowrap:
                self._wrap()
                row = self.grid[self.y]
            elif width == 2:
                self.x = self.cols - 2
        if self.insert:
            self._insert_blanks(width)
        self._clear_wide_edges(row, self.x, self.x + width)
        row[self.x] = char
        if width == 2:
            row[self.x + 1] = ""
        if self.x + width >= self.cols:
            self.x = self.cols - 1
            self.wrap_pending = self.autowrap
        else:
            self.x += width

    def _clear_wide_edges(self, row: list[str], start: int, stop: int) -> None:
        """Overwriting half of a wide character blanks its other half."""
        if 0 < start < self.cols and row[start] == "":
            row[start - 1] = " "
        if stop < self.cols and row[stop] == "":
            row[stop] = " "

    def _wrap(self) -> None:
        self.wrap_pending = False
        self.x = 0
        self._index()

    # -- control characters -------------------------------------------------------------------

    def _char(self, char: str) -> None:
        state = self._state
        if state == "ground":
            self._control(char)
        elif state == "escape":
            self._escape(char)
        elif state == "csi":
            self._csi_char(char)
        elif state == "string":
            self._string_char(char)
        elif state == "charset":
            self.charsets[self._charset_slot] = char
            self._state = "ground"
        else:  # one more character to skip (ESC # n, ESC % n, ESC SP n)
            self._state = "ground"

    def _control(self, char: str) -> None:
        code = ord(char)
        if code == 0x1B:
            self._state = "escape"
        elif code == 0x0D:
            self.x, self.wrap_pending = 0, False
        elif code in (0x0A, 0x0B, 0x0C):
            self._index()
        elif code == 0x08:
            self.x, self.wrap_pending = max(0, self.x - 1), False
        elif code == 0x09:
            self._tab(1)
        elif code == 0x0E:
            self.shift = 1
        elif code == 0x0F:
            self.shift = 0
        # BEL, NUL, DEL, C1 and the rest: nothing to show.

    def _escape(self, char: str) -> None:
        self._state = "ground"
        if char == "[":
            self._state, self._params, self._intermediates = "csi", "", ""
        elif char in "]PX^_":
            self._state, self._string, self._string_escape = "string", char, False
        elif char in "()*+":
            self._state, self._charset_slot = "charset", "()*+".index(char) % 2
        elif char in "#% ":
            self._state = "skip"
        elif char == "7":
            self._save_cursor()
        elif char == "8":
            self._restore_cursor()
        elif char == "D":
            self._index()
        elif char == "E":
            self.x = 0
            self._index()
        elif char == "M":
            self._reverse_index()
        elif char == "H":
            self.tabs.add(self.x)
        elif char == "c":
            self.reset()
        elif char == "\x1b":
            self._state = "escape"

    def _string_char(self, char: str) -> None:
        """OSC, DCS and the like: kept until BEL or ST; only a window title is used."""
        if char == "\x07" or (char == "\\" and self._string_escape):
            if self._string[0] == "]":
                number, _, value = self._string[1:].partition(";")
                if number in ("0", "2"):
                    self.title = value
            self._state = "ground"
        elif char in "\x18\x1a":
            self._state = "ground"
        elif char == "\x1b":
            self._string_escape = True
        elif self._string_escape:  # ESC and anything but a backslash: a new sequence
            self._escape(char)
        else:
            if len(self._string) < 4096:
                self._string += char

    # -- CSI ----------------------------------------------------------------------------------

    def _csi_char(self, char: str) -> None:
        code = ord(char)
        if 0x40 <= code <= 0x7E:
            self._state = "ground"
            self._csi(char)
        elif 0x30 <= code <= 0x3F:
            if len(self._params) < 64:
                self._params += char
        elif 0x20 <= code <= 0x2F:
            if len(self._intermediates) < _MAX_INTERMEDIATES:
                self._intermediates += char
        elif code == 0x1B:
            self._state = "escape"
        elif code in (0x18, 0x1A):
            self._state = "ground"
        elif code < 0x20:
            self._control(char)

    def _numbers(self) -> list[int]:
        values = []
        for part in self._params.lstrip("?><=").split(";"):
            head = part.split(":")[0]
            values.append(min(int(head), _MAX_PARAM) if head.isdigit() else 0)
        return values

    def _csi(self, final: str) -> None:
        private = self._params[:1] if self._params[:1] in ("?", ">", "<", "=") else ""
        numbers = self._numbers()
        first = numbers[0]
        count = max(1, first)
        if self._intermediates:
            if self._intermediates == "!" and final == "p":
                self._soft_reset()
            return
        if private:
            if private == "?" and final in "hl":
                for mode in numbers:
                    self._private_mode(mode, final == "h")
            return
        self.wrap_pending = self.wrap_pending and final in "mhlnctq"
        if final in "Hf":
            self._move_to(count - 1, max(1, numbers[1] if len(numbers) > 1 else 1) - 1)
        elif final == "A":
            limit = self.top if self.y >= self.top else 0
            self.y = max(limit, self.y - count)
        elif final in "Be":
            limit = self.bottom if self.y <= self.bottom else self.rows - 1
            self.y = min(limit, self.y + count)
        elif final in "Ca":
            self.x = min(self.cols - 1, self.x + count)
        elif final == "D":
            self.x = max(0, self.x - count)
        elif final == "E":
            self.x = 0
            self.y = min(self.bottom if self.y <= self.bottom else self.rows - 1, self.y + count)
        elif final == "F":
            self.x = 0
            self.y = max(self.top if self.y >= self.top else 0, self.y - count)
        elif final in "G`":
            self.x = min(self.cols - 1, count - 1)
        elif final == "d":
            self._move_to(count - 1, self.x)
        elif final == "J":
            self._erase_display(first)
        elif final == "K":
            self._erase_line(first)
        elif final == "@":
            self._insert_blanks(count)
        elif final == "P":
            self._delete_chars(count)
        elif final == "X":
            row = self.grid[self.y]
            stop = min(self.cols, self.x + count)
            self._clear_wide_edges(row, self.x, stop)
            row[self.x : stop] = [" "] * (stop - self.x)
        elif final == "L":
            self._insert_lines(count)
        elif final == "M":
            self._delete_lines(count)
        elif final == "S":
            self._scroll_up(count)
        elif final == "T" and len(numbers) == 1:
            self._scroll_down(count)
        elif final == "r":
            self._set_region(numbers)
        elif final == "s" and not self._params:
            self._save_cursor()
        elif final == "u" and not self._params:
            self._restore_cursor()
        elif final == "I":
            self._tab(count)
        elif final == "Z":
            self._tab(-count)
        elif final == "g":
            if first == 0:
                self.tabs.discard(self.x)
            elif first == 3:
                self.tabs.clear()
        elif final == "b":
            self._repeat(count)
        elif final in "hl" and 4 in numbers:
            self.insert = final == "h"
        # m (colours), n (reports), c, t, q and the rest change nothing shown.

    def _repeat(self, count: int) -> None:
        """REP: the last character again; programs repeat within a line, and a line's worth
        at a time keeps a crafted stream from costing a full screen of work per sequence."""
        self._print(self._last * min(count, self.cols))

    def _private_mode(self, mode: int, on: bool) -> None:
        if mode == 1:
            self.application_cursor = on
        elif mode == 6:
            self.origin = on
            self._move_to(0, 0)
        elif mode == 7:
            self.autowrap = on
        elif mode == 25:
            self.cursor_visible = on
        elif mode in (47, 1047, 1049):
            if mode == 1049 and on:
                self._save_cursor()
            self._switch_screen(on, clear=mode != 47)
            if mode == 1049 and not on:
                self._restore_cursor()
        elif mode == 1048:
            (self._save_cursor if on else self._restore_cursor)()

    def _soft_reset(self) -> None:
        self.insert = self.origin = self.application_cursor = False
        self.autowrap = self.cursor_visible = True
        self.top, self.bottom = 0, self.rows - 1
        self.charsets, self.shift = ["B", "B"], 0
        self.saved = _Saved()

    # -- the cursor ---------------------------------------------------------------------------

    def _move_to(self, row: int, col: int) -> None:
        if self.origin:
            self.y = min(self.bottom, self.top + max(0, row))
        else:
            self.y = min(self.rows - 1, max(0, row))
        self.x = min(self.cols - 1, max(0, col))
        self.wrap_pending = False

    def _tab(self, count: int) -> None:
        stops = sorted(self.tabs)
        # Past the last stop every further tab lands on the edge: a huge count is cut there.
        for _ in range(min(abs(count), len(stops) + 1)):
            if count > 0:
                self.x = next((t for t in stops if t > self.x), self.cols - 1)
            else:
                self.x = next((t for t in reversed(stops) if t < self.x), 0)
        self.wrap_pending = False

    def _save_cursor(self) -> None:
        self.saved = _Saved(
            self.x, self.y, self.origin, (self.charsets[0], self.charsets[1]), self.shift
        )

    def _restore_cursor(self) -> None:
        saved = self.saved
        self.x, self.y = min(saved.x, self.cols - 1), min(saved.y, self.rows - 1)
        self.origin = saved.origin
        self.charsets, self.shift = list(saved.charsets), saved.shift
        self.wrap_pending = False

    # -- scrolling and regions ----------------------------------------------------------------

    def _blank_grid(self) -> list[list[str]]:
        return [[" "] * self.cols for _ in range(self.rows)]

    def _index(self) -> None:
        if self.y == self.bottom:
            self._scroll_up(1)
        elif self.y < self.rows - 1:
            self.y += 1

    def _reverse_index(self) -> None:
        if self.y == self.top:
            self._scroll_down(1)
        elif self.y > 0:
            self.y -= 1

    def _scroll_up(self, count: int, top: int | None = None) -> None:
        top = self.top if top is None else top
        count = min(count, self.bottom - top + 1)
        del self.grid[top : top + count]
        for _ in range(count):
            self.grid.insert(self.bottom - count + 1, [" "] * self.cols)

    def _scroll_down(self, count: int, top: int | None = None) -> None:
        top = self.top if top is None else top
        count = min(count, self.bottom - top + 1)
        del self.grid[self.bottom - count + 1 : self.bottom + 1]
        for _ in range(count):
            self.grid.insert(top, [" "] * self.cols)

    def _set_region(self, numbers: list[int]) -> None:
        top = max(1, numbers[0]) - 1
        bottom = (numbers[1] if len(numbers) > 1 and numbers[1] else self.rows) - 1
        bottom = min(bottom, self.rows - 1)
        if top < bottom:
            self.top, self.bottom = top, bottom
            self._move_to(0, 0)

    def _insert_lines(self, count: int) -> None:
        if self.top <= self.y <= self.bottom:
            self._scroll_down(count, self.y)
            self.x = 0

    def _delete_lines(self, count: int) -> None:
        if self.top <= self.y <= self.bottom:
            self._scroll_up(count, self.y)
            self.x = 0

    def _switch_screen(self, alternate: bool, *, clear: bool) -> None:
        if alternate == self.alternate:
            if alternate and clear:
                self.grid[:] = self._blank_grid()
            return
        self.alternate = alternate
        if alternate:
            self._saved_main = self.saved
            self.grid = self._blank_grid()
        else:
            self.grid = self.main
            self.saved = self._saved_main
        self.wrap_pending = False

    # -- erasing, inserting, deleting ---------------------------------------------------------

    def _erase_display(self, how: int) -> None:
        if how == 0:
            self._erase_line(0)
            for row in range(self.y + 1, self.rows):
                self.grid[row] = [" "] * self.cols
        elif how == 1:
            self._erase_line(1)
            for row in range(self.y):
                self.grid[row] = [" "] * self.cols
        elif how in (2, 3):
            for row in range(self.rows):
                self.grid[row] = [" "] * self.cols

    def _erase_line(self, how: int) -> None:
        row = self.grid[self.y]
        start, stop = {0: (self.x, self.cols), 1: (0, self.x + 1)}.get(how, (0, self.cols))
        self._clear_wide_edges(row, start, stop)
        row[start:stop] = [" "] * (stop - start)

    def _insert_blanks(self, count: int) -> None:
        row = self.grid[self.y]
        count = min(count, self.cols - self.x)
        row[self.x : self.x] = [" "] * count
        del row[self.cols :]
        if row[-1] != " " and row[-1] != "" and _width(row[-1][0]) == 2:
            row[-1] = " "

    def _delete_chars(self, count: int) -> None:
        row = self.grid[self.y]
        count = min(count, self.cols - self.x)
        self._clear_wide_edges(row, self.x, self.x + count)
        del row[self.x : self.x + count]
        row.extend([" "] * count)
