"""The event feed operation: a project's events in order, paged by id, long-polling."""

from __future__ import annotations

import anyio

from server.core.caller import Caller
from server.core.gate import Gate
from server.core.hub import EventHub
from server.core.requests import GetEvents
from server.core.results import EventsResult
from server.store import Store

__all__ = ["Feed"]


class Feed:
    def __init__(self, store: Store, gate: Gate, hub: EventHub) -> None:
        self._store = store
        self._gate = gate
        self._hub = hub

    async def get_events(self, caller: Caller, request: GetEvents) -> EventsResult:
        """Events after ``since_id`` in order; with ``wait_s``, wait that long for the next."""
        grant = await self._gate.admit(caller, request.project_id)
        project_id, since_id = grant.project_id, request.since_id
        changed = self._hub.changed(project_id)
        # One more than asked: tells whether more are waiting.
        events = await self._store.events.after(project_id, since_id, request.limit + 1)
        if not events and request.wait_s > 0:
            with anyio.move_on_after(request.wait_s):
                await changed.wait()
            if not await self._gate.policy.still_member(grant):
                events = []
            else:
                events = await self._store.events.after(project_id, since_id, request.limit + 1)
        more = len(events) > request.limit
        events = events[: request.limit]
        return EventsResult(
            project_id=project_id,
            events=events,
            last_event_id=events[-1].event_id if events else since_id,
            has_more=more,
        )

    async def recent(self, caller: Caller, project_id: str, limit: int) -> EventsResult:
        """The last ``limit`` events of a project, oldest first (the MCP resource's view)."""
        grant = await self._gate.admit(caller, project_id)
        events = await self._store.events.latest(grant.project_id, limit)
        return EventsResult(
            project_id=grant.project_id,
            events=events,
            last_event_id=events[-1].event_id if events else 0,
        )
