"""Activity: what keeps a project awake.

Only work in or on the VM counts (commands, file operations, locks — the operation table's
``activity`` flag) and commands that are running; reading metadata, history, members or events
does not, so a dashboard or a reviewer polling a project never keeps it from sleeping. The time
is persisted at most every half minute, for other server processes sharing the data directory.
"""

from __future__ import annotations

import time

from server.core.runtime import Runtimes
from server.store import Store

__all__ = ["Activity"]

SAVE_EVERY_S = 30.0


class Activity:
    def __init__(self, store: Store, runtimes: Runtimes) -> None:
        self._store = store
        self._runtimes = runtimes

    async def touch(self, project_id: str) -> None:
        runtime = self._runtimes.of(project_id)
        now = time.monotonic()
        runtime.last_activity = now
        if now - runtime.activity_saved_at >= SAVE_EVERY_S:
            runtime.activity_saved_at = now
            async with self._store.transaction():
                await self._store.projects.touch(project_id)
