"""How many requests each agent has in progress over HTTP: a share of the server, not all of it.

The connection guard keeps connections that are being served (a tool call, a long-poll, an
event stream, a WebSocket) and, when every allowed connection is being served, turns new
clients away. So one agent holding that many open (1,024 WebSockets took four seconds) locked
every other agent and person out of the server. Each agent may now have at most a share of the
connections in progress at once (``share_of``: an eighth); past that its next request is
refused (429) until one of its own ends, and everyone else still gets in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from server.surfaces.http.auth import identity_of, send_json
from server.surfaces.http.problems import PROBLEM_JSON, Problem

__all__ = ["AgentBusy", "AgentSlots", "LimitPerAgent", "share_of"]

RETRY_AFTER_S = 1


def share_of(max_connections: int) -> int:
    """The requests one agent may have in progress: an eighth of the connections (at least 1),
    so that one agent, or a few, cannot hold every connection the server keeps."""
    return max(1, max_connections // 8)


class AgentBusy(Exception):
    """The agent already has as many requests in progress as it may."""

    def __init__(self, agent_id: str, limit: int) -> None:
        super().__init__(
            f"agent {agent_id!r} already has {limit} requests or WebSockets in progress, the "
            "most one agent may have at once (an eighth of http_max_connections); wait for "
            "one to end, or close sockets and streams you no longer read"
        )
        self.agent_id = agent_id
        self.limit = limit

    def problem(self) -> Problem:
        return Problem(429, "too-many-requests", "Too many requests", str(self))


class AgentSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    def in_progress(self, agent_id: str) -> int:
        return self._held[agent_id]

    def take(self, agent_id: str) -> None:
        """One of the agent's slots; :class:`AgentBusy` if none is free. Give it back with
        :meth:`give_back`."""
        if self._held[agent_id] >= self.limit:
            raise AgentBusy(agent_id, self.limit)
        self._held[agent_id] += 1

    def give_back(self, agent_id: str) -> None:
        self._held[agent_id] -= 1
        if self._held[agent_id] <= 0:
            del self._held[agent_id]

    @contextmanager
    def hold(self, agent_id: str) -> Iterator[None]:
        """One of the agent's slots for the block; :class:`AgentBusy` if none is free."""
        self.take(agent_id)
        try:
            yield
        finally:
            self.give_back(agent_id)


class LimitPerAgent:
    """ASGI middleware after authentication: each HTTP request holds one of its agent's slots
    until it is answered (a stream, until it ends). WebSockets hold theirs in their endpoint,
    where their agent becomes known."""

    def __init__(self, app: ASGIApp, slots: AgentSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = identity_of(scope) if scope["type"] == "http" else None
        if identity is None:
            await self.app(scope, receive, send)
            return
        try:
            self.slots.take(identity.agent_id)
        except AgentBusy as busy:
            await _refuse(scope, send, busy)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.give_back(identity.agent_id)


async def _refuse(scope: Scope, send: Send, busy: AgentBusy) -> None:
    headers = [(b"retry-after", str(RETRY_AFTER_S).encode())]
    if scope["path"].startswith("/api/"):
        body = json.dumps(busy.problem().body(scope["path"])).encode()
        await send_json(send, 429, body, headers, PROBLEM_JSON.encode())
    else:
        body = json.dumps({"error": "too-many-requests", "message": str(busy)}).encode()
        await send_json(send, 429, body, headers)
