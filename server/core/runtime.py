"""What the server holds in memory about each project: its queue, locks, live commands and
open terminals."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import anyio

from server.core.live import LiveExecution
from server.core.live_terminal import LiveTerminal
from server.core.queue import ExecutionQueue
from server.domain.models import ExecutionStatus, Project, ProjectSettings

__all__ = ["Runtime", "Runtimes"]

KEEP_FINISHED_LIVE = 64
KEEP_FINISHED_TERMINALS = 16


@dataclass
class Runtime:
    queue: ExecutionQueue
    # When the project was last used (monotonic seconds); idle projects go to sleep.
    last_activity: float = field(default_factory=time.monotonic)
    activity_saved_at: float = 0.0
    # Serialises start/stop/delete/sleep/recovery.
    lifecycle: anyio.Lock = field(default_factory=anyio.Lock)
    # Serialises file changes, so a conflict always sees the event of the write that won.
    mutation: anyio.Lock = field(default_factory=anyio.Lock)
    # Set while a stop or delete is under way: why running commands are being killed.
    stopping: str | None = None
    live: dict[str, LiveExecution] = field(default_factory=dict)
    # Recently finished executions, so followers can read their output to the end.
    recent: deque[LiveExecution] = field(default_factory=lambda: deque(maxlen=KEEP_FINISHED_LIVE))
    # Terminals open or waiting for a slot. Not activity by themselves (unlike running
    # commands): an idle terminal lets the project sleep, and is closed when it does.
    terminals: dict[str, LiveTerminal] = field(default_factory=dict)
    recent_terminals: deque[LiveTerminal] = field(
        default_factory=lambda: deque(maxlen=KEEP_FINISHED_TERMINALS)
    )

    def find(self, execution_id: str) -> LiveExecution | None:
        live = self.live.get(execution_id)
        if live is not None:
            return live
        return next((x for x in self.recent if x.execution.execution_id == execution_id), None)

    def find_terminal(self, execution_id: str) -> LiveTerminal | None:
        live = self.terminals.get(execution_id)
        if live is not None:
            return live
        return next(
            (x for x in self.recent_terminals if x.execution.execution_id == execution_id), None
        )

    def withdraw_queued(self, status: ExecutionStatus, reason: str) -> None:
        """Pull every execution still waiting for a slot out of the queue (a stop is under way)."""
        for live in list(self.live.values()):
            if live.handle is None:
                live.withdraw(self.queue, status, reason)

    def end_terminals(self, status: ExecutionStatus, reason: str) -> None:
        """Every terminal is about to end with the VM's channel: record why (a stop, a sleep);
        those still waiting for a slot leave the queue."""
        for live in list(self.terminals.values()):
            if live.handle is None:
                live.withdraw(self.queue, status, reason)
            elif live.abort_reason is None:
                live.abort_status, live.abort_reason = status, reason


class Runtimes:
    def __init__(self) -> None:
        self._by_project: dict[str, Runtime] = {}

    def of(self, project_id: str) -> Runtime:
        runtime = self._by_project.get(project_id)
        if runtime is None:
            default = ProjectSettings().max_concurrent_executions
            runtime = Runtime(queue=ExecutionQueue(default))
            self._by_project[project_id] = runtime
        return runtime

    def sized(self, project: Project) -> Runtime:
        """The project's runtime, its queue sized by the project's current settings."""
        runtime = self.of(project.project_id)
        if runtime.queue.limit != project.settings.max_concurrent_executions:
            runtime.queue.set_limit(project.settings.max_concurrent_executions)
        return runtime

    def peek(self, project_id: str) -> Runtime | None:
        return self._by_project.get(project_id)

    def forget(self, project_id: str) -> None:
        self._by_project.pop(project_id, None)
