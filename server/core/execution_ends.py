"""Recording how an execution ended (a command's or a terminal's), the same way for both."""

from __future__ import annotations

import logging
from datetime import datetime

import anyio

from server.core.journal import Journal
from server.domain.events import ExecutionFinished
from server.domain.models import Execution

__all__ = ["duration_ms", "record_end"]

log = logging.getLogger("projectvm.executions")


def duration_ms(
    reported_ms: int | None, started: datetime | None, completed: datetime
) -> int | None:
    """The guest's own figure when it reported one, else the time since the start (if any)."""
    if reported_ms is not None:
        return reported_ms
    return int((completed - started).total_seconds() * 1000) if started else None


async def record_end(journal: Journal, finished: Execution) -> None:
    """Commit ``finished`` with its event, shielded from cancellation. If the database fails,
    it is logged loudly and not raised: whoever waits for the end must still learn it."""
    try:
        with anyio.CancelScope(shield=True):
            async with journal.change() as change:
                await change.store.executions.finish(finished)
                await change.record(
                    finished.project_id,
                    finished.agent_id,
                    ExecutionFinished(
                        execution_id=finished.execution_id,
                        status=finished.status,
                        exit_code=finished.exit_code,
                        duration_ms=finished.duration_ms,
                        reason=finished.reason,
                    ),
                )
    except Exception:
        log.exception("could not record the end of %s %s", finished.kind, finished.execution_id)
