"""Single-use, short-lived tickets that open a project's WebSocket.

For clients that cannot put the bearer token in the handshake's ``Sec-WebSocket-Protocol``
(or rather not): ``POST /api/v1/ws-tickets`` with the token gives a ticket that stands for the
agent for :data:`TICKET_TTL_S` seconds, for one connection only, optionally to one project.
Tickets live in this server's memory; a restart forgets them, which only costs a new one.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, replace

from server.surfaces.http.auth import Identity

__all__ = ["PER_AGENT", "TICKET_TTL_S", "TicketBook"]

TICKET_TTL_S = 30.0
# Unused tickets one agent may hold; issuing more drops its own oldest. (A cap on all of them
# alone let one agent's flood drop everyone else's tickets.)
PER_AGENT = 16
MAX_OUTSTANDING = 10_000


@dataclass(frozen=True)
class _Ticket:
    identity: Identity  # of the request that asked for it, which the socket stands on
    project_id: str | None
    expires_at: float

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id


class TicketBook:
    def __init__(self, ttl_s: float = TICKET_TTL_S) -> None:
        self.ttl_s = ttl_s
        # In the order they were issued, which (one TTL for all) is the order they expire in.
        self._tickets: dict[str, _Ticket] = {}
        self._by_agent: dict[str, deque[str]] = {}

    def issue(self, identity: Identity, project_id: str | None = None) -> str:
        agent_id = identity.agent_id
        now = time.monotonic()
        self._expire(now)
        mine = self._by_agent.setdefault(agent_id, deque())
        if len(mine) >= PER_AGENT:
            self._tickets.pop(mine.popleft(), None)
        if len(self._tickets) >= MAX_OUTSTANDING:  # very many agents: drop the oldest
            self._drop(next(iter(self._tickets)))
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = _Ticket(identity, project_id, now + self.ttl_s)
        self._by_agent.setdefault(agent_id, mine).append(ticket)
        return ticket

    def redeem(self, ticket: str, project_id: str) -> Identity | None:
        """Who a ticket stands for (as a ``ticket`` identity), once; ``None`` if unknown, used,
        expired or made out to another project. The socket it opens stands on the credential
        the ticket was asked for with: replaced or revoked, it closes."""
        found = self._tickets.get(ticket)
        if found is None:
            return None
        self._drop(ticket)
        if found.expires_at <= time.monotonic():
            return None
        if found.project_id is not None and found.project_id != project_id:
            return None
        return replace(found.identity, via="ticket")

    def outstanding(self, agent_id: str | None = None) -> int:
        if agent_id is None:
            return len(self._tickets)
        return len(self._by_agent.get(agent_id, ()))

    def _expire(self, now: float) -> None:
        """Drop the expired tickets: the oldest ones, so only those are looked at."""
        while self._tickets:
            ticket, oldest = next(iter(self._tickets.items()))
            if oldest.expires_at > now:
                return
            self._drop(ticket)

    def _drop(self, ticket: str) -> None:
        found = self._tickets.pop(ticket, None)
        if found is None:
            return
        mine = self._by_agent.get(found.agent_id)
        if mine is not None:
            if ticket in mine:
                mine.remove(ticket)
            if not mine:
                del self._by_agent[found.agent_id]
