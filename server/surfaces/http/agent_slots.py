"""What each agent has in progress over HTTP: a share of the server, not all of it.

The connection guard keeps connections that are being served (a tool call, a long-poll, an
event stream, a WebSocket) and, when every allowed connection is being served, turns new
clients away. So one agent holding that many open (1,024 WebSockets took four seconds) locked
every other agent and person out of the server. Each agent may now have at most a share of the
connections in progress at once (``share_of``: an eighth).

Request bodies are held in memory while they arrive (an MCP call is read whole, up to the
largest ``write_file``: 43 MB by default). Ten half-sent 40 MB bodies held 390 MB; the share of
connections alone would let one agent hold 5 GB. So each agent may also have at most
``BODIES_PER_AGENT`` of the largest bodies arriving at once, counted by what each request
declares (``Content-Length``; a body without one counts as the largest).

Past either, the agent's next request is refused (429) until one of its own ends, and
everyone else still gets in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from server.surfaces.http.auth import identity_of, send_json
from server.surfaces.http.problems import PROBLEM_JSON, Problem

__all__ = ["BODIES_PER_AGENT", "AgentBusy", "AgentSlots", "LimitPerAgent", "share_of"]

RETRY_AFTER_S = 1
# How many of the largest request bodies one agent may be sending at once.
BODIES_PER_AGENT = 4


def share_of(max_connections: int) -> int:
    """The requests one agent may have in progress: an eighth of the connections (at least 1),
    so that one agent, or a few, cannot hold every connection the server keeps."""
    return max(1, max_connections // 8)


class AgentBusy(Exception):
    """The agent already has as much in progress as it may."""

    def problem(self) -> Problem:
        return Problem(429, "too-many-requests", "Too many requests", str(self))


class AgentSlots:
    """``limit`` requests (and WebSockets) per agent, and ``body_budget`` bytes of request
    bodies, where a body declares no size counting as ``largest_body``."""

    def __init__(self, limit: int, largest_body: int = 0) -> None:
        self.limit = limit
        self.largest_body = largest_body
        self.body_budget = BODIES_PER_AGENT * largest_body
        self._held: Counter[str] = Counter()
        self._body_bytes: Counter[str] = Counter()

    def in_progress(self, agent_id: str) -> int:
        return self._held[agent_id]

    def take(self, agent_id: str, body_bytes: int = 0) -> None:
        """One of the agent's slots (and room for a body of ``body_bytes``);
        :class:`AgentBusy` if there is none. Give it back with :meth:`give_back`."""
        if self._held[agent_id] >= self.limit:
            raise AgentBusy(
                f"agent {agent_id!r} already has {self.limit} requests or WebSockets in "
                "progress, the most one agent may have at once (an eighth of "
                "http_max_connections); wait for one to end, or close sockets and streams you "
                "no longer read"
            )
        if body_bytes and self._body_bytes[agent_id] + body_bytes > self.body_budget:
            raise AgentBusy(
                f"agent {agent_id!r} is already sending {self._body_bytes[agent_id]} bytes of "
                f"request bodies, and this one would pass {self.body_budget}, the most one "
                f"agent may send at once ({BODIES_PER_AGENT} of the largest); finish or drop "
                "the others first (give a Content-Length: a body without one counts as the "
                "largest)"
            )
        self._held[agent_id] += 1
        self._body_bytes[agent_id] += body_bytes

    def give_back(self, agent_id: str, body_bytes: int = 0) -> None:
        self._held[agent_id] -= 1
        self._body_bytes[agent_id] -= body_bytes
        if self._held[agent_id] <= 0:
            del self._held[agent_id]
        if self._body_bytes[agent_id] <= 0:
            del self._body_bytes[agent_id]

    @contextmanager
    def hold(self, agent_id: str) -> Iterator[None]:
        """One of the agent's slots for the block; :class:`AgentBusy` if none is free."""
        self.take(agent_id)
        try:
            yield
        finally:
            self.give_back(agent_id)

    def body_of(self, scope: Scope) -> int:
        """The bytes a request's body will hold (at most the largest a request may have)."""
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit():
                declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None:
            return min(declared, self.largest_body)
        return self.largest_body if chunked else 0


class LimitPerAgent:
    """ASGI middleware after authentication: each HTTP request holds one of its agent's slots
    (and its body's room) until it is answered (a stream, until it ends). WebSockets hold theirs
    in their endpoint, where their agent becomes known."""

    def __init__(self, app: ASGIApp, slots: AgentSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = identity_of(scope) if scope["type"] == "http" else None
        if identity is None:
            await self.app(scope, receive, send)
            return
        body = self.slots.body_of(scope)
        try:
            self.slots.take(identity.agent_id, body)
        except AgentBusy as busy:
            await _refuse(scope, send, busy)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.give_back(identity.agent_id, body)


async def _refuse(scope: Scope, send: Send, busy: AgentBusy) -> None:
    headers = [(b"retry-after", str(RETRY_AFTER_S).encode())]
    if scope["path"].startswith("/api/"):
        body = json.dumps(busy.problem().body(scope["path"])).encode()
        await send_json(send, 429, body, headers, PROBLEM_JSON.encode())
    else:
        body = json.dumps({"error": "too-many-requests", "message": str(busy)}).encode()
        await send_json(send, 429, body, headers)
