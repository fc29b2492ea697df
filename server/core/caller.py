"""Who is calling, through which surface, for which operation, and where progress goes.

Every operation of the core receives a :class:`Caller`; nothing is read from ambient state, so
an operation behaves the same whether MCP, REST, a WebSocket or the CLI asked for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from server.domain.operations import Operation, OperationSpec, spec_of

__all__ = ["Caller", "ProgressReporter", "Surface", "no_progress"]

Surface = Literal["stdio", "http", "memory", "rest", "websocket", "cli"]
ProgressReporter = Callable[[str], Awaitable[None]]


async def no_progress(message: str) -> None:
    """Where progress goes when the caller did not ask for any."""


@dataclass(frozen=True)
class Caller:
    agent_id: str
    surface: Surface
    operation: Operation
    progress: ProgressReporter = field(default=no_progress, compare=False)

    @property
    def spec(self) -> OperationSpec:
        return spec_of(self.operation)

    def doing(self, operation: Operation) -> Caller:
        """The same caller, for another operation (a composite call, e.g. a follow-up read)."""
        return replace(self, operation=operation)

    async def report(self, message: str) -> None:
        await self.progress(message)
