"""The ``events`` table: each project's append-only feed, in ``event_id`` order."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from server.domain.models import Event
from server.store.database import Database, required_dt, ts, utcnow

__all__ = ["EventsRepo"]


class EventsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self, project_id: str | None, agent_id: str | None, kind: str, data: dict[str, Any]
    ) -> Event:
        created = utcnow()
        body = json.dumps(data, default=str)
        await self._db.write(
            """INSERT INTO events (project_id, agent_id, kind, data, created_at)
               VALUES (?, ?, ?, ?, ?)""",
            (project_id, agent_id, kind, body, ts(created)),
        )
        row = await self._db.fetchone("SELECT last_insert_rowid()")
        assert row is not None
        return Event(
            event_id=int(row[0]),
            project_id=project_id,
            agent_id=agent_id,
            kind=kind,
            data=json.loads(body),
            created_at=created,
        )

    async def after(self, project_id: str, since_id: int = 0, limit: int = 200) -> list[Event]:
        """Up to ``limit`` events of a project after ``since_id``, oldest first."""
        rows = await self._db.fetchall(
            """SELECT * FROM events WHERE project_id = ? AND event_id > ?
               ORDER BY event_id LIMIT ?""",
            (project_id, since_id, limit),
        )
        return [self._event(row) for row in rows]

    async def latest(self, project_id: str, limit: int) -> list[Event]:
        """The last ``limit`` events of a project, oldest first."""
        rows = await self._db.fetchall(
            """SELECT * FROM (SELECT * FROM events WHERE project_id = ?
                              ORDER BY event_id DESC LIMIT ?) ORDER BY event_id""",
            (project_id, limit),
        )
        return [self._event(row) for row in rows]

    async def last_for_path(self, project_id: str, path: str) -> Event | None:
        """The latest file event of a project about ``path`` (who changed it last)."""
        row = await self._db.fetchone(
            """SELECT * FROM events WHERE project_id = ? AND kind LIKE 'file.%'
               AND json_extract(data, '$.path') = ? ORDER BY event_id DESC LIMIT 1""",
            (project_id, path),
        )
        return self._event(row) if row else None

    async def project_ids(self) -> list[str]:
        """Every project with events, deleted ones included (the audit trail outlives them)."""
        rows = await self._db.fetchall(
            "SELECT DISTINCT project_id FROM events WHERE project_id IS NOT NULL ORDER BY 1"
        )
        return [str(row[0]) for row in rows]

    async def last_id(self, project_id: str) -> int:
        row = await self._db.fetchone(
            "SELECT MAX(event_id) FROM events WHERE project_id = ?", (project_id,)
        )
        return int(row[0]) if row and row[0] is not None else 0

    @staticmethod
    def _event(row: aiosqlite.Row) -> Event:
        return Event(
            event_id=row["event_id"],
            project_id=row["project_id"],
            agent_id=row["agent_id"],
            kind=row["kind"],
            data=json.loads(row["data"]),
            created_at=required_dt(row["created_at"]),
        )
