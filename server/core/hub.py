"""The one place events go after they are committed: long-polls and subscribers.

The journal calls :meth:`EventHub.publish` after every commit that recorded events. Long-polls
wait on a per-project event; publishers (MCP resource notifications) are called from one
background task, so a slow subscriber never holds up the call that made the change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import anyio

from server.domain.models import Event

__all__ = ["EventHub", "Publisher"]

log = logging.getLogger("projectvm.events")

Publisher = Callable[[str], Awaitable[None]]


class EventHub:
    def __init__(self) -> None:
        self._changed: dict[str, anyio.Event] = {}
        self._publishers: list[Publisher] = []
        self._dirty: set[str] = set()
        self._wake = anyio.Event()

    def publish(self, events: Iterable[Event]) -> None:
        """Committed events: wake whoever waits on their projects."""
        for project_id in {event.project_id for event in events if event.project_id}:
            changed = self._changed.pop(project_id, None)
            if changed is not None:
                changed.set()
            if self._publishers:
                self._dirty.add(project_id)
                self._wake.set()

    def changed(self, project_id: str) -> anyio.Event:
        """The event set at the next change of ``project_id``; take it *before* reading."""
        return self._changed.setdefault(project_id, anyio.Event())

    def add_publisher(self, publisher: Publisher) -> None:
        self._publishers.append(publisher)

    async def run_publishers(self) -> None:
        """Call every publisher for every changed project, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            dirty, self._dirty = self._dirty, set()
            for project_id in sorted(dirty):
                for publisher in self._publishers:
                    try:
                        await publisher(project_id)
                    except Exception:  # a broken subscriber must not stop the feed
                        log.exception("publishing the events of %s failed", project_id)
