"""The ``projects`` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiosqlite

from server.domain.models import STORED, Project, ProjectSettings
from server.store.database import Database, dt, required_dt, ts, utcnow

__all__ = ["ProjectsRepo"]

UPDATABLE = frozenset(
    {
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
)


class ProjectsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, project: Project) -> None:
        await self._db.write(
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
                ts(project.created_at),
                ts(project.updated_at),
                ts(project.last_activity_at),
            ),
        )

    async def update(self, project_id: str, **fields: Any) -> None:
        """Set some columns of a project (``updated_at`` too)."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update project columns {sorted(unknown)}")
        values = {
            key: (
                value.model_dump_json()
                if isinstance(value, ProjectSettings)
                else ts(value)
                if isinstance(value, datetime)
                else value
            )
            for key, value in fields.items()
        }
        values["updated_at"] = ts(utcnow())
        assignments = ", ".join(f"{key} = ?" for key in values)
        await self._db.write(
            f"UPDATE projects SET {assignments} WHERE project_id = ?",
            (*values.values(), project_id),
        )

    async def touch(self, project_id: str) -> None:
        await self._db.write(
            "UPDATE projects SET last_activity_at = ? WHERE project_id = ?",
            (ts(utcnow()), project_id),
        )

    async def delete(self, project_id: str) -> None:
        await self._db.write("DELETE FROM projects WHERE project_id = ?", (project_id,))

    async def _project(self, row: aiosqlite.Row) -> Project:
        members = await self._db.fetchall(
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
            created_at=required_dt(row["created_at"]),
            updated_at=required_dt(row["updated_at"]),
            last_activity_at=dt(row["last_activity_at"]),
            settings=ProjectSettings.model_validate_json(row["settings"], context=STORED),
        )

    async def get(self, project_id: str) -> Project | None:
        row = await self._db.fetchone("SELECT * FROM projects WHERE project_id = ?", (project_id,))
        return await self._project(row) if row else None

    async def list(self, agent_id: str | None = None) -> list[Project]:
        """Every project, or those ``agent_id`` is a member of."""
        if agent_id is None:
            rows = await self._db.fetchall("SELECT * FROM projects ORDER BY created_at")
        else:
            rows = await self._db.fetchall(
                """SELECT p.* FROM projects p JOIN project_agents m USING (project_id)
                   WHERE m.agent_id = ? ORDER BY p.created_at""",
                (agent_id,),
            )
        return [await self._project(row) for row in rows]
