"""What a WebSocket has yet to send, bounded by size rather than by count.

A count bounded nothing useful: 256 queued messages of a command's output (each up to a few
megabytes) held 80 MB for one socket that did not read. Here the queued text is bounded in
characters; a message larger than the whole budget still goes, alone.
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.queued = 0  # characters waiting
        self._texts: deque[str] = deque()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._texts)

    async def put(self, text: str) -> None:
        """Queue ``text``, first waiting while the queue is not empty and it would not fit."""
        while self._texts and self.queued + len(text) > self.budget:
            await self._wait()
        self._texts.append(text)
        self.queued += len(text)
        self._notify()

    async def get(self) -> str:
        """The oldest queued text, waiting for one."""
        while not self._texts:
            await self._wait()
        text = self._texts.popleft()
        self.queued -= len(text)
        self._notify()
        return text

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
