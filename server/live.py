"""A command while it runs: its output so far, its exit, and a way to wait for either.

The guest already caps each stream (a head, then the last bytes as a tail), so what is kept here
is bounded per execution whatever the command prints.
"""

from __future__ import annotations

import anyio

from guest_runtime.client import ExecHandle
from guest_runtime.protocol import ExecExit, ExecOutput
from server.models import Execution

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
        self.finished = anyio.Event()
        self._changed = anyio.Event()

    def add(self, event: ExecOutput | ExecExit) -> None:
        if isinstance(event, ExecOutput):
            self.chunks.append(event)
        else:
            self.exit = event
        self._changed.set()
        self._changed = anyio.Event()

    def finish(self, execution: Execution) -> None:
        self.execution = execution
        self.finished.set()
        self._changed.set()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after new output or the end, or after ``timeout`` seconds."""
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    def stdout(self) -> str:
        return render_output(self.chunks, "stdout")

    def stderr(self) -> str:
        return render_output(self.chunks, "stderr")
