"""``TerminalHandle``: a terminal open in the guest, as the host's client sees it.

The client's reader routes ``term.output`` and ``term.exit`` notifications here. They queue
until the owner takes them with :meth:`TerminalHandle.events`; a terminal's output has no end
(unlike a command's, which the guest caps), so the queue holds at most
``MAX_QUEUED_BYTES``: past that the oldest output is dropped, and the next piece taken says
how much (``skipped``), so an owner that falls behind loses old output, never the server's
memory, and never stalls the reader that serves every other call on the channel.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio

from guest_runtime.agent import methods
from guest_runtime.errors import GuestUnreachable
from guest_runtime.protocol import TermExit, TermOutput

if TYPE_CHECKING:
    from guest_runtime.client import GuestClient

__all__ = ["MAX_QUEUED_BYTES", "TermEvent", "TerminalHandle"]

MAX_QUEUED_BYTES = 8 * 1024 * 1024
# How long the guest may take to hang a terminal up and reap it, past the grace it was given.
CLOSE_SLACK_S = 30.0

TermEvent = TermOutput | TermExit


class TerminalHandle:
    """A terminal in the guest: its output and exit, its input, size and hang-up."""

    def __init__(self, client: GuestClient, term_id: str, pid: int = 0) -> None:
        self.client = client
        self.term_id = term_id
        self.pid = pid
        self.argv: list[str] = []  # what the guest runs (the login shell, when no command)
        self.next_seq = 0  # the seq the next output must have (others are strays)
        self.exit: TermExit | None = None
        self._queue: deque[TermEvent] = deque()
        self._queued_bytes = 0
        self._dropped = 0
        self._lost: GuestUnreachable | None = None
        self._arrived = anyio.Event()

    def _deliver(self, event: TermEvent | GuestUnreachable) -> None:
        if isinstance(event, GuestUnreachable):
            self._lost = event
        else:
            self._queue.append(event)
            if isinstance(event, TermOutput):
                self._queued_bytes += len(event.data)
                self._drop_oldest()
        self._arrived.set()

    def _drop_oldest(self) -> None:
        while self._queued_bytes > MAX_QUEUED_BYTES:
            oldest = next((e for e in self._queue if isinstance(e, TermOutput)), None)
            if oldest is None:
                return
            self._queue.remove(oldest)
            self._queued_bytes -= len(oldest.data)
            self._dropped += len(oldest.data) + oldest.skipped

    async def receive(self) -> TermEvent:
        """The next piece of output, or the exit (again, once it came); raises if the channel
        is lost first. Safe to cancel: nothing is taken until it returns."""
        while True:
            if self._queue:
                event = self._queue.popleft()
                if isinstance(event, TermExit):
                    self.exit = event
                    return event
                self._queued_bytes -= len(event.data)
                if self._dropped:
                    event = event.model_copy(update={"skipped": self._dropped})
                    self._dropped = 0
                return event
            if self.exit is not None:
                return self.exit
            if self._lost is not None:
                raise self._lost
            arrived = self._arrived = anyio.Event()
            await arrived.wait()

    async def events(self) -> AsyncIterator[TermEvent]:
        """Output in ``seq`` order, then the exit; raises if the channel is lost first."""
        while True:
            event = await self.receive()
            yield event
            if isinstance(event, TermExit):
                return

    async def write(self, data: bytes) -> int:
        """Type ``data`` into the terminal; returns how many bytes it took."""
        encoded = base64.b64encode(data).decode()
        result = await self.client.request(
            methods.TERM_INPUT, methods.TermInput(self.term_id, encoded)
        )
        return int(result.get("written", 0))

    async def resize(self, cols: int, rows: int) -> None:
        await self.client.request(methods.TERM_RESIZE, methods.TermResize(self.term_id, cols, rows))

    async def close(self, grace_s: float = 2.0) -> TermExit:
        """Hang the terminal up (SIGHUP), kill what is left after ``grace_s``; its exit."""
        result = await self.client.request(
            methods.TERM_CLOSE,
            methods.TermClose(self.term_id, grace_s),
            timeout=grace_s + CLOSE_SLACK_S,
        )
        return TermExit.model_validate(result)
