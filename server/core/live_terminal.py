"""A terminal while it is open: its last output, its screen, its size, and a way to wait.

Output is addressed by byte offsets from the terminal's start (the cursors readers pass as
``since``). Only the last ``BUFFER_BYTES`` are kept, for readers that join late or fall
behind; what is older is reported as skipped. The screen is computed when someone looks, from
what it has not seen yet (a terminal nobody reads costs a copy into the buffer, nothing more);
if what it had not seen is gone, it starts again from the oldest output kept.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

import anyio

from guest_runtime.protocol import TermExit
from guest_runtime.terminal import TerminalHandle
from server.core.queue import ExecutionQueue, Ticket
from server.core.terminal_screen import Screen
from server.domain.models import Execution, ExecutionStatus

__all__ = [
    "BUFFER_BYTES",
    "LiveTerminal",
    "OutputBuffer",
    "ScreenSnapshot",
    "complete_utf8",
    "readable_text",
]

BUFFER_BYTES = 256 * 1024

# Terminal control sequences, and the control characters that are not layout.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, until BEL or ST
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS and other strings
    r"|\x1b[()*+#% ]."  # charsets and the like: one more character
    r"|\x1b[^\[\]PX^_]"  # any other escape
    r"|[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]"
)


def readable_text(text: str) -> str:
    """Terminal output as plain text: no escape sequences, CRLF as newlines, backspaces
    applied (so a typed and erased character is gone)."""
    text = _ESCAPES.sub("", text).replace("\r\n", "\n")
    if "\b" in text:
        kept: list[str] = []
        for char in text:
            if char == "\b":
                if kept and kept[-1] != "\n":
                    kept.pop()
            else:
                kept.append(char)
        text = "".join(kept)
    return text.replace("\r", "")


def complete_utf8(data: bytes) -> int:
    """How much of ``data`` ends on a UTF-8 character boundary (a cut character waits)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: is its character complete?
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= needed else len(data) - back
    return len(data)


class OutputBuffer:
    """At least the last ``capacity`` bytes of a stream (at most twice that), addressed by
    offsets from its start."""

    def __init__(self, capacity: int = BUFFER_BYTES) -> None:
        self.capacity = capacity
        self._data = bytearray()
        self.start = 0  # offset of the oldest byte kept
        self.end = 0  # offset after the newest byte

    def append(self, data: bytes, skipped: int = 0) -> None:
        """Add output; ``skipped`` bytes before it were lost on the way (a gap)."""
        if skipped:
            self._data.clear()
            self.end += skipped
            self.start = self.end
        self._data += data
        self.end += len(data)
        # Trimmed in batches: a copy per keystroke's echo would cost more than the memory.
        if len(self._data) > 2 * self.capacity:
            cut = len(self._data) - self.capacity
            del self._data[:cut]
            self.start += cut

    def read(self, since: int) -> tuple[int, bytes]:
        """(offset of the first byte returned, the bytes after ``since`` still kept)."""
        first = max(self.start, min(since, self.end))
        return first, bytes(self._data[first - self.start :])


@dataclass(frozen=True)
class ScreenSnapshot:
    """What a terminal's screen shows, taken at one moment."""

    text: str
    cols: int
    rows: int
    cursor: tuple[int, int]  # (row, column), 0-based
    alternate: bool
    title: str
    application_cursor: bool


def _draw(screen: Screen, steps: list[tuple[bytes, tuple[int, int] | None]]) -> ScreenSnapshot:
    for data, size in steps:
        if data:
            screen.feed(data)
        if size is not None:
            screen.resize(*size)
    return ScreenSnapshot(
        text=screen.text(),
        cols=screen.cols,
        rows=screen.rows,
        cursor=screen.cursor,
        alternate=screen.alternate,
        title=screen.title,
        application_cursor=screen.application_cursor,
    )


class LiveTerminal:
    def __init__(self, execution: Execution, cols: int, rows: int, idle_timeout_s: float) -> None:
        self.execution = execution
        self.cols, self.rows = cols, rows
        self.idle_timeout_s = idle_timeout_s
        self.output = OutputBuffer()
        self.handle: TerminalHandle | None = None
        self.ticket: Ticket | None = None
        self.exit: TermExit | None = None
        self.last_input = time.monotonic()
        # Cancelled to pull the terminal out of the queue before it opens.
        self.wait_scope = anyio.CancelScope()
        # Set when someone ends it on purpose: what to record instead of its own exit.
        self.abort_status = ExecutionStatus.COMPLETED
        self.abort_reason: str | None = None
        self.finished = anyio.Event()
        self._changed = anyio.Event()
        # Sizes over time: (offset, cols, rows), so the screen resizes where the program did.
        self._sizes: list[tuple[int, int, int]] = [(0, cols, rows)]
        self._screen = Screen(cols, rows)
        self._screen_lock = anyio.Lock()
        self._screen_at = 0
        self._next_size = 1

    # -- state --------------------------------------------------------------------------------

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after new output, a resize or the end, or after ``timeout`` seconds."""
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    def mark_started(self, started_at: datetime, queued_ms: int, command: str) -> None:
        self.execution = self.execution.model_copy(
            update={
                "status": ExecutionStatus.RUNNING,
                "started_at": started_at,
                "queued_ms": queued_ms,
                "command": command,
            }
        )
        self.notify()

    def withdraw(self, queue: ExecutionQueue, status: ExecutionStatus, reason: str) -> bool:
        """Take the terminal out of ``queue`` before it opens; False if it already opened."""
        if self.finished.is_set():
            return False
        self.abort_status, self.abort_reason = status, reason
        if self.ticket is not None and queue.withdraw(self.ticket):
            self.wait_scope.cancel()
            return True
        return False

    def add_output(self, data: bytes, skipped: int = 0) -> None:
        self.output.append(data, skipped)
        self.notify()

    def resized(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        self._sizes.append((self.output.end, cols, rows))
        self.notify()

    def finish(self, execution: Execution) -> None:
        self.execution = execution
        self.finished.set()
        self.notify()

    # -- the screen ---------------------------------------------------------------------------

    async def snapshot(self) -> ScreenSnapshot:
        """The screen as of the newest output, worked out in a worker thread: crafted output
        can make a large screen cost seconds to draw, which must not hold the event loop."""
        async with self._screen_lock:
            start, end = self.output.start, self.output.end
            if self._screen_at < start:
                self._restart_screen(start)
            first, data = self.output.read(self._screen_at)
            # What to draw, as (output, then a resize) steps; the bookkeeping stays here.
            steps: list[tuple[bytes, tuple[int, int] | None]] = []
            at = self._screen_at
            while self._next_size < len(self._sizes) and self._sizes[self._next_size][0] <= end:
                offset, cols, rows = self._sizes[self._next_size]
                steps.append((data[at - first : max(at, offset) - first], (cols, rows)))
                at = max(at, offset)
                self._next_size += 1
            steps.append((data[at - first : end - first], None))
            self._screen_at = end
            # Only this lock's holder touches the screen, so the thread has it alone.
            return await anyio.to_thread.run_sync(_draw, self._screen, steps)

    def _restart_screen(self, start: int) -> None:
        """What the screen had not seen is gone: start again from the oldest output kept."""
        index = max(i for i, (offset, _, _) in enumerate(self._sizes) if offset <= start)
        _, cols, rows = self._sizes[index]
        self._screen = Screen(cols, rows)
        self._screen_at = start
        self._next_size = index + 1
        del self._sizes[:index]  # sizes older than what is kept are not needed again
        self._next_size -= index
