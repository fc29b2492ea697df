"""Read a guest terminal's output until a pattern appears, or until it exits."""

from __future__ import annotations

import anyio

from guest_runtime.client import TerminalHandle
from guest_runtime.protocol import TermExit, TermOutput


class PtyReader:
    """Collects a terminal's output as it comes; every wait is bounded."""

    def __init__(self, handle: TerminalHandle) -> None:
        self.handle = handle
        self.output = bytearray()
        self.chunks: list[TermOutput] = []
        self._events = handle.events()

    async def until(self, pattern: bytes, *, deadline: float = 60) -> bytes:
        """All output so far, once ``pattern`` is in it (after ``start``)."""
        with anyio.fail_after(deadline):
            while pattern not in self.output:
                await self._next()
        return bytes(self.output)

    async def exit(self, *, deadline: float = 60) -> TermExit:
        with anyio.fail_after(deadline):
            while self.handle.exit is None:
                await self._next()
        return self.handle.exit

    async def _next(self) -> None:
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            ended = f"the terminal ended; its output: {bytes(self.output)!r}"
            raise AssertionError(ended) from None
        if isinstance(event, TermOutput):
            self.output += event.data
            self.chunks.append(event)
