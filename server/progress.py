"""What the current call is, and where its progress goes, without threading them through.

The MCP tool layer sets both for the duration of a tool call; the service reads them where it
needs them (waking a sleeping VM reports progress; ``allowed_tools`` is checked against the
tool name). Outside a tool call both are unset and reporting is a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["current_tool", "report", "reporting"]

Reporter = Callable[[str], Awaitable[None]]

_reporter: ContextVar[Reporter | None] = ContextVar("projectvm_progress", default=None)
_tool: ContextVar[str | None] = ContextVar("projectvm_tool", default=None)


@contextmanager
def reporting(tool: str, reporter: Reporter | None) -> Iterator[None]:
    """Within this block, the call is ``tool`` and progress messages go to ``reporter``."""
    tool_token = _tool.set(tool)
    reporter_token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(reporter_token)
        _tool.reset(tool_token)


def current_tool() -> str | None:
    return _tool.get()


async def report(message: str) -> None:
    reporter = _reporter.get()
    if reporter is not None:
        await reporter(message)
