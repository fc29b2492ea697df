"""A wake-up that can be raised many times: each ``wait`` sees the raises after it began."""

from __future__ import annotations

import anyio

__all__ = ["Wakeup"]


class Wakeup:
    def __init__(self) -> None:
        self._event = anyio.Event()

    def raise_(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return when raised (since the last wait) or after ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()
