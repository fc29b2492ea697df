"""The ``project_agents`` table: who belongs to which project, at which level."""

from __future__ import annotations

from server.domain.models import AccessLevel, Member
from server.store.database import Database, required_dt, ts, utcnow

__all__ = ["MembersRepo"]


class MembersRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def level(self, project_id: str, agent_id: str) -> AccessLevel | None:
        row = await self._db.fetchone(
            "SELECT access_level FROM project_agents WHERE project_id = ? AND agent_id = ?",
            (project_id, agent_id),
        )
        return AccessLevel(row["access_level"]) if row else None

    async def levels_of(self, agent_id: str) -> dict[str, AccessLevel]:
        """Every project ``agent_id`` belongs to, with its level there."""
        rows = await self._db.fetchall(
            "SELECT project_id, access_level FROM project_agents WHERE agent_id = ?", (agent_id,)
        )
        return {row["project_id"]: AccessLevel(row["access_level"]) for row in rows}

    async def list(self, project_id: str) -> list[Member]:
        rows = await self._db.fetchall(
            "SELECT * FROM project_agents WHERE project_id = ? ORDER BY added_at, agent_id",
            (project_id,),
        )
        return [
            Member(
                agent_id=row["agent_id"],
                access_level=row["access_level"],
                added_at=required_dt(row["added_at"]),
                added_by=row["added_by"],
            )
            for row in rows
        ]

    async def set(self, project_id: str, agent_id: str, level: AccessLevel, added_by: str) -> None:
        await self._db.write(
            """INSERT INTO project_agents (project_id, agent_id, access_level, added_at,
                   added_by) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (project_id, agent_id)
               DO UPDATE SET access_level = excluded.access_level""",
            (project_id, agent_id, level, ts(utcnow()), added_by),
        )

    async def remove(self, project_id: str, agent_id: str) -> bool:
        changed = await self._db.write(
            "DELETE FROM project_agents WHERE project_id = ? AND agent_id = ?",
            (project_id, agent_id),
        )
        return changed > 0
