"""The ``project_executions`` table: the audit log of every command, and its queue state.

Every row gets ``seq``, an increasing position assigned when it is inserted (inserts are
serialised by the write transaction), so history can be paged by it: rows that arrive while a
reader pages never shift the pages it has not read yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import aiosqlite

from server.domain.models import Execution, ExecutionStatus
from server.store.database import Database, dt, ts, utcnow

__all__ = ["ExecutionsRepo", "Order"]

Order = Literal["newest_first", "oldest_first"]

_COLUMNS = (
    "execution_id",
    "project_id",
    "agent_id",
    "command",
    "kind",
    "cwd",
    "output",
    "error_output",
    "exit_code",
    "status",
    "reason",
    "timed_out",
    "truncated",
    "queued_at",
    "started_at",
    "completed_at",
    "duration_ms",
    "queued_ms",
    "server_id",
    "seq",
)
# Output can be megabytes per row: listings that do not show it do not read it.
_WITHOUT_OUTPUT = [f"NULL AS {c}" if c in ("output", "error_output") else c for c in _COLUMNS]


class ExecutionsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, execution: Execution, server_id: str) -> None:
        await self._db.write(
            """INSERT INTO project_executions (execution_id, project_id, agent_id, command,
                kind, cwd, status, queued_at, started_at, queued_ms, server_id, seq)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                       (SELECT COALESCE(MAX(seq), 0) + 1 FROM project_executions))""",
            (
                execution.execution_id,
                execution.project_id,
                execution.agent_id,
                execution.command,
                execution.kind,
                execution.cwd,
                execution.status,
                ts(execution.queued_at),
                ts(execution.started_at),
                execution.queued_ms,
                server_id,
            ),
        )

    async def mark_started(
        self, execution_id: str, started_at: datetime, queued_ms: int, command: str | None = None
    ) -> None:
        """Running now; ``command`` replaces the recorded one (a terminal's shell, once known)."""
        await self._db.write(
            """UPDATE project_executions SET status = ?, started_at = ?, queued_ms = ?,
                command = COALESCE(?, command)
               WHERE execution_id = ?""",
            (ExecutionStatus.RUNNING, ts(started_at), queued_ms, command, execution_id),
        )

    async def finish(self, execution: Execution) -> None:
        await self._db.write(
            """UPDATE project_executions SET status = ?, exit_code = ?, output = ?,
                error_output = ?, reason = ?, timed_out = ?, truncated = ?, started_at = ?,
                completed_at = ?, duration_ms = ?, queued_ms = ?
               WHERE execution_id = ?""",
            (
                execution.status,
                execution.exit_code,
                execution.output,
                execution.error_output,
                execution.reason,
                int(execution.timed_out),
                int(execution.truncated),
                ts(execution.started_at),
                ts(execution.completed_at),
                execution.duration_ms,
                execution.queued_ms,
                execution.execution_id,
            ),
        )

    @staticmethod
    def _execution(row: aiosqlite.Row) -> Execution:
        return Execution(
            execution_id=row["execution_id"],
            project_id=row["project_id"],
            agent_id=row["agent_id"],
            command=row["command"],
            kind=row["kind"],
            cwd=row["cwd"],
            status=row["status"],
            exit_code=row["exit_code"],
            output=row["output"],
            error_output=row["error_output"],
            reason=row["reason"],
            timed_out=bool(row["timed_out"]),
            truncated=bool(row["truncated"]),
            queued_at=dt(row["queued_at"]),
            started_at=dt(row["started_at"]),
            completed_at=dt(row["completed_at"]),
            duration_ms=row["duration_ms"],
            queued_ms=row["queued_ms"],
            seq=row["seq"],
        )

    async def get(self, execution_id: str) -> Execution | None:
        row = await self._db.fetchone(
            "SELECT * FROM project_executions WHERE execution_id = ?", (execution_id,)
        )
        return self._execution(row) if row else None

    async def page(
        self,
        project_id: str,
        *,
        agent_id: str | None = None,
        statuses: Iterable[ExecutionStatus] | None = None,
        after_seq: int | None = None,
        before_seq: int | None = None,
        order: Order = "newest_first",
        limit: int = 50,
        include_output: bool = True,
    ) -> list[Execution]:
        """Up to ``limit`` executions of a project in ``seq`` order, within the bounds."""
        clauses = ["project_id = ?"]
        params: list[Any] = [project_id]
        if agent_id is not None:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        status_list = list(statuses or [])
        if status_list:
            clauses.append(f"status IN ({', '.join('?' for _ in status_list)})")
            params.extend(status_list)
        if after_seq is not None:
            clauses.append("seq > ?")
            params.append(after_seq)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        columns = "*" if include_output else ", ".join(_WITHOUT_OUTPUT)
        direction = "DESC" if order == "newest_first" else "ASC"
        rows = await self._db.fetchall(
            f"""SELECT {columns} FROM project_executions WHERE {" AND ".join(clauses)}
                ORDER BY seq {direction} LIMIT ?""",
            (*params, limit),
        )
        return [self._execution(row) for row in rows]

    async def output_sizes(self, execution_ids: list[str]) -> dict[str, int]:
        """Bytes of stored output (both streams) per execution, without reading the outputs."""
        if not execution_ids:
            return {}
        marks = ", ".join("?" for _ in execution_ids)
        rows = await self._db.fetchall(
            f"""SELECT execution_id,
                       COALESCE(length(CAST(output AS BLOB)), 0)
                       + COALESCE(length(CAST(error_output AS BLOB)), 0) AS size
                FROM project_executions WHERE execution_id IN ({marks})""",
            execution_ids,
        )
        return {row["execution_id"]: int(row["size"]) for row in rows}

    async def unfinished(self) -> list[tuple[str, str | None]]:
        """(execution id, server id) of every execution queued or running."""
        rows = await self._db.fetchall(
            "SELECT execution_id, server_id FROM project_executions WHERE status IN (?, ?)",
            (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING),
        )
        return [(row["execution_id"], row["server_id"]) for row in rows]

    async def interrupt(self, execution_id: str, reason: str) -> bool:
        """Mark a queued or running execution as interrupted (its server is gone)."""
        changed = await self._db.write(
            """UPDATE project_executions SET status = ?, reason = ?, completed_at = ?
               WHERE execution_id = ? AND status IN (?, ?)""",
            (
                ExecutionStatus.INTERRUPTED,
                reason,
                ts(utcnow()),
                execution_id,
                ExecutionStatus.QUEUED,
                ExecutionStatus.RUNNING,
            ),
        )
        return changed > 0
