"""The ``path_locks`` table: advisory locks with an expiry time."""

from __future__ import annotations

from datetime import datetime

from server.domain.models import PathLock
from server.store.database import Database, required_dt, ts

__all__ = ["LocksRepo"]


class LocksRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def live(self, project_id: str, now: datetime) -> list[PathLock]:
        """The project's locks that have not expired at ``now`` (expired ones are ignored)."""
        rows = await self._db.fetchall(
            """SELECT * FROM path_locks WHERE project_id = ? AND expires_at > ?
               ORDER BY path""",
            (project_id, ts(now)),
        )
        return [
            PathLock(
                path=row["path"],
                agent_id=row["agent_id"],
                acquired_at=required_dt(row["acquired_at"]),
                expires_at=required_dt(row["expires_at"]),
            )
            for row in rows
        ]

    async def purge_expired(self, project_id: str, now: datetime) -> None:
        await self._db.write(
            "DELETE FROM path_locks WHERE project_id = ? AND expires_at <= ?",
            (project_id, ts(now)),
        )

    async def put(self, project_id: str, lock: PathLock) -> None:
        await self._db.write(
            """INSERT INTO path_locks (project_id, path, agent_id, acquired_at, expires_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (project_id, path) DO UPDATE SET agent_id = excluded.agent_id,
                   acquired_at = excluded.acquired_at, expires_at = excluded.expires_at""",
            (project_id, lock.path, lock.agent_id, ts(lock.acquired_at), ts(lock.expires_at)),
        )

    async def delete(self, project_id: str, path: str) -> bool:
        changed = await self._db.write(
            "DELETE FROM path_locks WHERE project_id = ? AND path = ?", (project_id, path)
        )
        return changed > 0
