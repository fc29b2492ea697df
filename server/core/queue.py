"""A project's execution queue: at most N commands run at once, waiting ones start fairly.

Waiting executions are kept per agent and served round-robin across agents, so one agent's
burst of fifty commands does not starve another agent's single one. Queue positions are what
that order would do if nothing else arrived.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import anyio

__all__ = ["ExecutionQueue", "Ticket"]


@dataclass(eq=False)
class Ticket:
    execution_id: str
    agent_id: str
    granted: anyio.Event = field(default_factory=anyio.Event)


class ExecutionQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[str, Ticket] = {}
        self._waiting: dict[str, deque[Ticket]] = {}
        self._turns: deque[str] = deque()  # agents with waiting tickets, next to serve first

    def submit(self, ticket: Ticket) -> None:
        """Queue ``ticket``; it is granted at once when a slot is free."""
        if ticket.agent_id not in self._waiting:
            self._waiting[ticket.agent_id] = deque()
            self._turns.append(ticket.agent_id)
        self._waiting[ticket.agent_id].append(ticket)
        self._schedule()

    def release(self, ticket: Ticket) -> None:
        """A granted ticket's execution ended: free its slot."""
        if self.running.pop(ticket.execution_id, None) is not None:
            self._schedule()

    def withdraw(self, ticket: Ticket) -> bool:
        """Remove a ticket still waiting; False if it was already granted or unknown."""
        waiting = self._waiting.get(ticket.agent_id)
        if waiting is None or ticket not in waiting:
            return False
        waiting.remove(ticket)
        if not waiting:
            del self._waiting[ticket.agent_id]
            self._turns.remove(ticket.agent_id)
        return True

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._schedule()

    def _schedule(self) -> None:
        while len(self.running) < self.limit and self._turns:
            agent = self._turns.popleft()
            waiting = self._waiting[agent]
            ticket = waiting.popleft()
            if waiting:
                self._turns.append(agent)
            else:
                del self._waiting[agent]
            self.running[ticket.execution_id] = ticket
            ticket.granted.set()

    def positions(self) -> dict[str, int]:
        """Waiting execution ids and their positions (1 = starts next)."""
        copies = {agent: deque(tickets) for agent, tickets in self._waiting.items()}
        turns = deque(self._turns)
        order: dict[str, int] = {}
        while turns:
            agent = turns.popleft()
            order[copies[agent].popleft().execution_id] = len(order) + 1
            if copies[agent]:
                turns.append(agent)
        return order

    @property
    def waiting_count(self) -> int:
        return sum(len(tickets) for tickets in self._waiting.values())
