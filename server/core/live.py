"""A command while it runs: its output so far, its exit, and a way to wait for either.

The guest already caps each stream (a head, then the last bytes as a tail), so what is kept here
is bounded per execution whatever the command prints.
"""

from __future__ import annotations

from datetime import datetime

import anyio

from guest_runtime.client import ExecHandle
from guest_runtime.protocol import ExecExit, ExecOutput
from server.core.queue import ExecutionQueue, Ticket
from server.domain.models import Execution, ExecutionStatus

__all__ = ["LiveExecution", "render_output"]


def render_output(chunks: list[ExecOutput], stream: str) -> str:
    """One stream's text: the head, a marker for what was dropped, then the tail."""
    parts: list[bytes] = []
    for chunk in chunks:
        if chunk.stream != stream:
            continue
        if chunk.tail:
            parts.append(f"\n[... {chunk.skipped} bytes of output omitted ...]\n".encode())
        parts.append(chunk.data)
    return b"".join(parts).decode("utf-8", errors="replace")


class LiveExecution:
    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.chunks: list[ExecOutput] = []
        self.exit: ExecExit | None = None
        self.handle: ExecHandle | None = None
        self.ticket: Ticket | None = None
        self.keep_stdin_open = False
        # Cancelled to pull the execution out of the queue before it starts.
        self.wait_scope = anyio.CancelScope()
        # Set when someone stops it on purpose: what to record instead of "killed on request".
        self.abort_status = ExecutionStatus.CANCELLED
        self.abort_reason: str | None = None
        # Why the command could not even start in the VM (it is recorded as failed too).
        self.start_error: Exception | None = None
        self.finished = anyio.Event()
        self._changed = anyio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def mark_started(self, started_at: datetime, queued_ms: int) -> None:
        self.execution = self.execution.model_copy(
            update={
                "status": ExecutionStatus.RUNNING,
                "started_at": started_at,
                "queued_ms": queued_ms,
            }
        )
        self.notify()

    def withdraw(self, queue: ExecutionQueue, status: ExecutionStatus, reason: str) -> bool:
        """Take the execution out of ``queue`` before it starts; False if it already started."""
        if self.finished.is_set():
            return False
        self.abort_status, self.abort_reason = status, reason
        if self.ticket is not None and queue.withdraw(self.ticket):
            self.wait_scope.cancel()
            return True
        return False

    def add(self, event: ExecOutput | ExecExit) -> None:
        if isinstance(event, ExecOutput):
            self.chunks.append(event)
        else:
            self.exit = event
        self.notify()

    def finish(self, execution: Execution) -> None:
        self.execution = execution
        self.finished.set()
        self.notify()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after new output or the end, or after ``timeout`` seconds."""
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    def stdout(self) -> str:
        return render_output(self.chunks, "stdout")

    def stderr(self) -> str:
        return render_output(self.chunks, "stderr")
