"""The SQLite store (aiosqlite): the source of truth for projects, agents, executions, events.

One connection per server, WAL journal, ``synchronous=FULL``: a change is on disk before the call
that made it returns. Writes are serialised by a lock and grouped in short transactions, so they
never interleave; reads share the connection and may see a transaction that is about to commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite
import anyio

from server.errors import StoreBusy
from server.migrations import MIGRATIONS
from server.models import (
    AccessLevel,
    Agent,
    Event,
    Execution,
    ExecutionStatus,
    Member,
    PathLock,
    Project,
    ProjectSettings,
)

__all__ = ["SCHEMA_VERSION", "Store", "utcnow"]

SCHEMA_VERSION = MIGRATIONS[-1][0]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _required_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Store:
    """Typed access to the database. Open with ``async with await Store.open(path)``."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._write_lock = anyio.Lock()
        self._touched: set[str | None] = set()
        # Called with a project id after a commit that appended events to it (for long-polls).
        self.event_listeners: list[Callable[[str | None], None]] = []

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_s: float = 10.0) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        connection.row_factory = aiosqlite.Row
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
                f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}",
            ):
                await connection.execute(pragma)
            store = cls(connection, path)
            await store._migrate()
        except BaseException:
            await connection.close()
            raise
        return store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        current = await self.schema_version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database at {self.path} has schema {current}, newer than this ProjectVM "
                f"({SCHEMA_VERSION}); upgrade ProjectVM or use another --data-dir"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            async with self.transaction() as db:
                for statement in statements:
                    await db.execute(statement)
                await db.execute("DELETE FROM schema_version")
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT MAX(version) FROM schema_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An immediate write transaction; commits on success, rolls back on any error."""
        async with self._write_lock:
            # BEGIN, COMMIT and ROLLBACK are shielded: a caller cancelled half-way must never
            # leave the shared connection inside a transaction.
            with anyio.CancelScope(shield=True):
                try:
                    await self._db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as err:
                    raise StoreBusy(
                        f"the database {self.path} is busy ({err}): another ProjectVM process "
                        "holds it; try again"
                    ) from err
            try:
                yield self._db
                with anyio.CancelScope(shield=True):
                    await self._db.execute("COMMIT")
            except BaseException:
                self._touched.clear()
                with anyio.CancelScope(shield=True):
                    if self._db.in_transaction:
                        await self._db.execute("ROLLBACK")
                raise
            touched, self._touched = self._touched, set()
            for project_id in touched:
                for listener in self.event_listeners:
                    listener(project_id)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def integrity_check(self) -> str:
        row = await self._fetchone("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    # -- users and agents ---------------------------------------------------------------------

    async def ensure_agent(self, agent_id: str, user_id: str | None = None) -> Agent:
        async with self.transaction() as db:
            if user_id is not None:
                await db.execute(
                    "INSERT OR IGNORE INTO users (user_id, name, created_at) VALUES (?, ?, ?)",
                    (user_id, user_id, _ts(utcnow())),
                )
            await db.execute(
                "INSERT OR IGNORE INTO agents (agent_id, user_id, created_at) VALUES (?, ?, ?)",
                (agent_id, user_id, _ts(utcnow())),
            )
        agent = await self.get_agent(agent_id)
        assert agent is not None
        return agent

    async def set_agent_token(self, agent_id: str, token_hash: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE agents SET token_hash = ? WHERE agent_id = ?", (token_hash, agent_id)
            )

    @staticmethod
    def _agent(row: aiosqlite.Row) -> Agent:
        return Agent(
            agent_id=row["agent_id"],
            created_at=_required_dt(row["created_at"]),
            last_seen_at=_dt(row["last_seen_at"]),
            has_token=row["token_hash"] is not None,
        )

    async def get_agent(self, agent_id: str) -> Agent | None:
        row = await self._fetchone("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return self._agent(row) if row else None

    async def agent_for_token_hash(self, token_hash: str) -> str | None:
        row = await self._fetchone(
            "SELECT agent_id FROM agents WHERE token_hash = ?", (token_hash,)
        )
        return str(row["agent_id"]) if row else None

    async def list_agents(self) -> list[Agent]:
        rows = await self._fetchall("SELECT * FROM agents ORDER BY agent_id")
        return [self._agent(row) for row in rows]

    async def remove_agent(self, agent_id: str) -> bool:
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
            return cursor.rowcount > 0

    async def touch_agent(self, agent_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE agents SET last_seen_at = ? WHERE agent_id = ?",
                (_ts(utcnow()), agent_id),
            )

    # -- projects -----------------------------------------------------------------------------

    async def insert_project(self, project: Project) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO projects (project_id, name, description, project_type, driver,
                    vm_id, vm_status, vm_status_reason, vm_url, workspace_path, owner_id,
                    settings, created_at, updated_at, last_activity_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    project.project_id,
                    project.name,
                    project.description,
                    project.project_type,
                    project.driver,
                    project.vm_id,
                    project.vm_status,
                    project.vm_status_reason,
                    project.vm_url,
                    project.workspace_path,
                    project.owner_id,
                    project.settings.model_dump_json(),
                    _ts(project.created_at),
                    _ts(project.updated_at),
                    _ts(project.last_activity_at),
                ),
            )
            await db.execute(
                """INSERT INTO project_agents (project_id, agent_id, access_level, added_at,
                    added_by) VALUES (?, ?, ?, ?, ?)""",
                (
                    project.project_id,
                    project.owner_id,
                    AccessLevel.ADMIN,
                    _ts(project.created_at),
                    project.owner_id,
                ),
            )
            await self._insert_event(
                db,
                project.project_id,
                project.owner_id,
                "project.created",
                {"name": project.name, "project_type": project.project_type},
            )

    async def _project_from_row(self, row: aiosqlite.Row) -> Project:
        members = await self._fetchall(
            "SELECT agent_id FROM project_agents WHERE project_id = ? ORDER BY added_at, agent_id",
            (row["project_id"],),
        )
        return Project(
            project_id=row["project_id"],
            name=row["name"],
            description=row["description"],
            project_type=row["project_type"],
            driver=row["driver"],
            vm_id=row["vm_id"],
            vm_status=row["vm_status"],
            vm_status_reason=row["vm_status_reason"],
            vm_url=row["vm_url"],
            workspace_path=row["workspace_path"],
            owner_id=row["owner_id"],
            agents=[m["agent_id"] for m in members],
            created_at=_required_dt(row["created_at"]),
            updated_at=_required_dt(row["updated_at"]),
            last_activity_at=_dt(row["last_activity_at"]),
            settings=ProjectSettings.model_validate_json(row["settings"]),
        )

    async def get_project(self, project_id: str) -> Project | None:
        row = await self._fetchone("SELECT * FROM projects WHERE project_id = ?", (project_id,))
        return await self._project_from_row(row) if row else None

    async def list_projects(self, agent_id: str | None = None) -> list[Project]:
        if agent_id is None:
            rows = await self._fetchall("SELECT * FROM projects ORDER BY created_at")
        else:
            rows = await self._fetchall(
                """SELECT p.* FROM projects p JOIN project_agents m USING (project_id)
                   WHERE m.agent_id = ? ORDER BY p.created_at""",
                (agent_id,),
            )
        return [await self._project_from_row(row) for row in rows]

    async def update_project(
        self,
        project_id: str,
        *,
        event: tuple[str | None, str, dict[str, Any]] | None = None,
        **fields: Any,
    ) -> None:
        """Update columns of a project, and append ``event`` (agent, kind, data) atomically."""
        allowed = {
            "name",
            "description",
            "vm_id",
            "vm_status",
            "vm_status_reason",
            "vm_url",
            "workspace_path",
            "settings",
            "last_activity_at",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update project columns {sorted(unknown)}")
        values = {
            key: (
                value.model_dump_json()
                if isinstance(value, ProjectSettings)
                else _ts(value)
                if isinstance(value, datetime)
                else value
            )
            for key, value in fields.items()
        }
        values["updated_at"] = _ts(utcnow())
        assignments = ", ".join(f"{key} = ?" for key in values)
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE projects SET {assignments} WHERE project_id = ?",
                (*values.values(), project_id),
            )
            if event is not None:
                await self._insert_event(db, project_id, *event)

    async def touch_project(self, project_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE projects SET last_activity_at = ? WHERE project_id = ?",
                (_ts(utcnow()), project_id),
            )

    async def delete_project(self, project_id: str, agent_id: str | None) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM projects WHERE project_id = ?", (project_id,))
            await self._insert_event(db, project_id, agent_id, "project.deleted", {})

    # -- members ------------------------------------------------------------------------------

    async def member_level(self, project_id: str, agent_id: str) -> AccessLevel | None:
        row = await self._fetchone(
            "SELECT access_level FROM project_agents WHERE project_id = ? AND agent_id = ?",
            (project_id, agent_id),
        )
        return AccessLevel(row["access_level"]) if row else None

    async def list_members(self, project_id: str) -> list[Member]:
        rows = await self._fetchall(
            "SELECT * FROM project_agents WHERE project_id = ? ORDER BY added_at, agent_id",
            (project_id,),
        )
        return [
            Member(
                agent_id=row["agent_id"],
                access_level=row["access_level"],
                added_at=_required_dt(row["added_at"]),
                added_by=row["added_by"],
            )
            for row in rows
        ]

    async def set_member(
        self, project_id: str, agent_id: str, level: AccessLevel, added_by: str
    ) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO project_agents (project_id, agent_id, access_level, added_at,
                       added_by) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project_id, agent_id)
                   DO UPDATE SET access_level = excluded.access_level""",
                (project_id, agent_id, level, _ts(utcnow()), added_by),
            )
            await self._insert_event(
                db,
                project_id,
                added_by,
                "member.assigned",
                {"member": agent_id, "access_level": level},
            )

    async def remove_member(self, project_id: str, agent_id: str, removed_by: str) -> bool:
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM project_agents WHERE project_id = ? AND agent_id = ?",
                (project_id, agent_id),
            )
            if cursor.rowcount:
                await self._insert_event(
                    db, project_id, removed_by, "member.removed", {"member": agent_id}
                )
            return cursor.rowcount > 0

    # -- executions ---------------------------------------------------------------------------

    async def insert_execution(self, execution: Execution, server_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO project_executions (execution_id, project_id, agent_id, command,
                    cwd, status, queued_at, started_at, queued_ms, server_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    execution.execution_id,
                    execution.project_id,
                    execution.agent_id,
                    execution.command,
                    execution.cwd,
                    execution.status,
                    _ts(execution.queued_at),
                    _ts(execution.started_at),
                    execution.queued_ms,
                    server_id,
                ),
            )
            await self._insert_event(
                db,
                execution.project_id,
                execution.agent_id,
                "execution.queued",
                {"execution_id": execution.execution_id, "command": execution.command[:500]},
            )
            if execution.status == ExecutionStatus.RUNNING:
                await self._insert_event(
                    db,
                    execution.project_id,
                    execution.agent_id,
                    "execution.started",
                    {"execution_id": execution.execution_id, "queued_ms": 0},
                )

    async def mark_execution_started(self, execution_id: str, started_at: datetime) -> None:
        async with self.transaction() as db:
            row = await (
                await db.execute(
                    "SELECT project_id, agent_id, queued_at FROM project_executions "
                    "WHERE execution_id = ?",
                    (execution_id,),
                )
            ).fetchone()
            if row is None:
                return
            queued_at = _dt(row["queued_at"])
            queued_ms = int((started_at - queued_at).total_seconds() * 1000) if queued_at else 0
            await db.execute(
                """UPDATE project_executions SET status = ?, started_at = ?, queued_ms = ?
                   WHERE execution_id = ?""",
                (ExecutionStatus.RUNNING, _ts(started_at), queued_ms, execution_id),
            )
            await self._insert_event(
                db,
                row["project_id"],
                row["agent_id"],
                "execution.started",
                {"execution_id": execution_id, "queued_ms": queued_ms},
            )

    async def finish_execution(self, execution: Execution) -> None:
        async with self.transaction() as db:
            await db.execute(
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
                    _ts(execution.started_at),
                    _ts(execution.completed_at),
                    execution.duration_ms,
                    execution.queued_ms,
                    execution.execution_id,
                ),
            )
            await self._insert_event(
                db,
                execution.project_id,
                execution.agent_id,
                "execution.finished",
                {
                    "execution_id": execution.execution_id,
                    "status": execution.status,
                    "exit_code": execution.exit_code,
                    "duration_ms": execution.duration_ms,
                    **({"reason": execution.reason} if execution.reason else {}),
                },
            )

    @staticmethod
    def _execution(row: aiosqlite.Row) -> Execution:
        return Execution(
            execution_id=row["execution_id"],
            project_id=row["project_id"],
            agent_id=row["agent_id"],
            command=row["command"],
            cwd=row["cwd"],
            status=row["status"],
            exit_code=row["exit_code"],
            output=row["output"],
            error_output=row["error_output"],
            reason=row["reason"],
            timed_out=bool(row["timed_out"]),
            truncated=bool(row["truncated"]),
            queued_at=_dt(row["queued_at"]),
            started_at=_dt(row["started_at"]),
            completed_at=_dt(row["completed_at"]),
            duration_ms=row["duration_ms"],
            queued_ms=row["queued_ms"],
        )

    async def get_execution(self, execution_id: str) -> Execution | None:
        row = await self._fetchone(
            "SELECT * FROM project_executions WHERE execution_id = ?", (execution_id,)
        )
        return self._execution(row) if row else None

    async def list_executions(
        self,
        project_id: str,
        *,
        agent_id: str | None = None,
        statuses: Iterable[ExecutionStatus] | None = None,
        limit: int = 50,
        include_output: bool = True,
    ) -> list[Execution]:
        clauses = ["project_id = ?"]
        params: list[Any] = [project_id]
        if agent_id is not None:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        status_list = list(statuses or [])
        if status_list:
            clauses.append(f"status IN ({', '.join('?' for _ in status_list)})")
            params.extend(status_list)
        columns = "*" if include_output else "*, NULL AS output, NULL AS error_output"
        rows = await self._fetchall(
            f"""SELECT {columns} FROM project_executions WHERE {" AND ".join(clauses)}
                ORDER BY COALESCE(started_at, queued_at) DESC, rowid DESC LIMIT ?""",
            (*params, limit),
        )
        return [self._execution(row) for row in rows]

    async def interrupt_orphaned_executions(
        self, reason: str, is_alive: Callable[[str | None], bool]
    ) -> int:
        """Mark executions queued or running under a server that is gone as interrupted."""
        rows = await self._fetchall(
            "SELECT execution_id, server_id FROM project_executions WHERE status IN (?, ?)",
            (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING),
        )
        orphaned = [row["execution_id"] for row in rows if not is_alive(row["server_id"])]
        if not orphaned:
            return 0
        async with self.transaction() as db:
            for execution_id in orphaned:
                await db.execute(
                    """UPDATE project_executions SET status = ?, reason = ?, completed_at = ?
                       WHERE execution_id = ? AND status IN (?, ?)""",
                    (
                        ExecutionStatus.INTERRUPTED,
                        reason,
                        _ts(utcnow()),
                        execution_id,
                        ExecutionStatus.QUEUED,
                        ExecutionStatus.RUNNING,
                    ),
                )
        return len(orphaned)

    # -- events -------------------------------------------------------------------------------

    async def _insert_event(
        self,
        db: aiosqlite.Connection,
        project_id: str | None,
        agent_id: str | None,
        kind: str,
        data: dict[str, Any],
    ) -> None:
        await db.execute(
            """INSERT INTO events (project_id, agent_id, kind, data, created_at)
               VALUES (?, ?, ?, ?, ?)""",
            (project_id, agent_id, kind, json.dumps(data, default=str), _ts(utcnow())),
        )
        self._touched.add(project_id)

    async def append_event(
        self, project_id: str | None, agent_id: str | None, kind: str, data: dict[str, Any]
    ) -> None:
        async with self.transaction() as db:
            await self._insert_event(db, project_id, agent_id, kind, data)

    async def list_events(
        self, project_id: str, *, since_id: int = 0, limit: int = 200
    ) -> list[Event]:
        rows = await self._fetchall(
            """SELECT * FROM events WHERE project_id = ? AND event_id > ?
               ORDER BY event_id LIMIT ?""",
            (project_id, since_id, limit),
        )
        return [self._event(row) for row in rows]

    async def list_recent_events(self, project_id: str, limit: int) -> list[Event]:
        rows = await self._fetchall(
            """SELECT * FROM (SELECT * FROM events WHERE project_id = ?
                              ORDER BY event_id DESC LIMIT ?) ORDER BY event_id""",
            (project_id, limit),
        )
        return [self._event(row) for row in rows]

    async def last_event_for_path(self, project_id: str, path: str) -> Event | None:
        rows = await self._fetchall(
            """SELECT * FROM events WHERE project_id = ? AND kind LIKE 'file.%'
               AND json_extract(data, '$.path') = ? ORDER BY event_id DESC LIMIT 1""",
            (project_id, path),
        )
        return self._event(rows[0]) if rows else None

    @staticmethod
    def _event(row: aiosqlite.Row) -> Event:
        return Event(
            event_id=row["event_id"],
            project_id=row["project_id"],
            agent_id=row["agent_id"],
            kind=row["kind"],
            data=json.loads(row["data"]),
            created_at=_required_dt(row["created_at"]),
        )

    # -- path locks ---------------------------------------------------------------------------

    async def live_locks(self, project_id: str) -> list[PathLock]:
        """The project's locks that have not expired (expired ones are deleted on the way)."""
        now = utcnow()
        async with self.transaction() as db:
            await db.execute(
                "DELETE FROM path_locks WHERE project_id = ? AND expires_at <= ?",
                (project_id, _ts(now)),
            )
        rows = await self._fetchall(
            "SELECT * FROM path_locks WHERE project_id = ? ORDER BY path", (project_id,)
        )
        return [
            PathLock(
                path=row["path"],
                agent_id=row["agent_id"],
                acquired_at=_required_dt(row["acquired_at"]),
                expires_at=_required_dt(row["expires_at"]),
            )
            for row in rows
        ]

    async def put_lock(self, project_id: str, lock: PathLock) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO path_locks (project_id, path, agent_id, acquired_at, expires_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project_id, path) DO UPDATE SET agent_id = excluded.agent_id,
                       acquired_at = excluded.acquired_at, expires_at = excluded.expires_at""",
                (
                    project_id,
                    lock.path,
                    lock.agent_id,
                    _ts(lock.acquired_at),
                    _ts(lock.expires_at),
                ),
            )
            await self._insert_event(
                db,
                project_id,
                lock.agent_id,
                "lock.acquired",
                {"path": lock.path, "expires_at": _ts(lock.expires_at)},
            )

    async def delete_lock(self, project_id: str, path: str, agent_id: str) -> bool:
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM path_locks WHERE project_id = ? AND path = ?", (project_id, path)
            )
            if cursor.rowcount:
                await self._insert_event(db, project_id, agent_id, "lock.released", {"path": path})
            return cursor.rowcount > 0
