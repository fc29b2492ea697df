"""Changes and the events that record them, committed together, published after.

An operation that changes state opens ``journal.change()``: inside it, it writes through the
store and records the events that describe the change; both commit in one transaction, and
only then are the events published to the hub. A change that fails records nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.core.hub import EventHub
from server.domain.events import EventPayload
from server.domain.models import Event
from server.store import Store

__all__ = ["Change", "Journal"]


class Change:
    """One open transaction: write through ``store``, ``record`` what happened."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.recorded: list[Event] = []

    async def record(
        self, project_id: str | None, agent_id: str | None, payload: EventPayload
    ) -> Event:
        event = await self.store.events.append(project_id, agent_id, payload.kind, payload.data())
        self.recorded.append(event)
        return event


class Journal:
    def __init__(self, store: Store, hub: EventHub) -> None:
        self.store = store
        self.hub = hub

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        change = Change(self.store)
        async with self.store.transaction():
            yield change
        self.hub.publish(change.recorded)

    async def record(
        self, project_id: str | None, agent_id: str | None, payload: EventPayload
    ) -> Event:
        """A change that is only an event."""
        async with self.change() as change:
            return await change.record(project_id, agent_id, payload)
