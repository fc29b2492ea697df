"""Single-use, short-lived tickets that open a project's WebSocket.

For clients that cannot put the bearer token in the handshake's ``Sec-WebSocket-Protocol``
(or rather not): ``POST /api/v1/ws-tickets`` with the token gives a ticket that stands for the
agent for :data:`TICKET_TTL_S` seconds, for one connection only, optionally to one project.
Tickets live in this server's memory; a restart forgets them, which only costs a new one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

__all__ = ["TICKET_TTL_S", "TicketBook"]

TICKET_TTL_S = 30.0
MAX_OUTSTANDING = 10_000


@dataclass(frozen=True)
class _Ticket:
    agent_id: str
    project_id: str | None
    expires_at: float


class TicketBook:
    def __init__(self, ttl_s: float = TICKET_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._tickets: dict[str, _Ticket] = {}

    def issue(self, agent_id: str, project_id: str | None = None) -> str:
        now = time.monotonic()
        self._tickets = {k: t for k, t in self._tickets.items() if t.expires_at > now}
        if len(self._tickets) >= MAX_OUTSTANDING:  # a flood of unused tickets: drop the oldest
            oldest = min(self._tickets, key=lambda key: self._tickets[key].expires_at)
            del self._tickets[oldest]
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = _Ticket(agent_id, project_id, now + self.ttl_s)
        return ticket

    def redeem(self, ticket: str, project_id: str) -> str | None:
        """The agent a ticket stands for, once; ``None`` if unknown, used, expired or made
        out to another project."""
        found = self._tickets.pop(ticket, None)
        if found is None or found.expires_at <= time.monotonic():
            return None
        if found.project_id is not None and found.project_id != project_id:
            return None
        return found.agent_id
