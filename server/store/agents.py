"""The ``agents`` and ``users`` tables: identities and the hashes of their tokens."""

from __future__ import annotations

import aiosqlite

from server.domain.models import Agent
from server.store.database import Database, dt, required_dt, ts, utcnow

__all__ = ["AgentsRepo"]


class AgentsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure(self, agent_id: str, user_id: str | None = None) -> None:
        """Create the agent (and its user) unless they exist. Writes: needs a transaction."""
        if user_id is not None:
            await self._db.write(
                "INSERT OR IGNORE INTO users (user_id, name, created_at) VALUES (?, ?, ?)",
                (user_id, user_id, ts(utcnow())),
            )
        await self._db.write(
            "INSERT OR IGNORE INTO agents (agent_id, user_id, created_at) VALUES (?, ?, ?)",
            (agent_id, user_id, ts(utcnow())),
        )

    async def set_token_hash(self, agent_id: str, token_hash: str) -> None:
        await self._db.write(
            "UPDATE agents SET token_hash = ? WHERE agent_id = ?", (token_hash, agent_id)
        )

    async def remove(self, agent_id: str) -> bool:
        return await self._db.write("DELETE FROM agents WHERE agent_id = ?", (agent_id,)) > 0

    async def touch(self, agent_id: str) -> None:
        await self._db.write(
            "UPDATE agents SET last_seen_at = ? WHERE agent_id = ?", (ts(utcnow()), agent_id)
        )

    @staticmethod
    def _agent(row: aiosqlite.Row) -> Agent:
        return Agent(
            agent_id=row["agent_id"],
            created_at=required_dt(row["created_at"]),
            last_seen_at=dt(row["last_seen_at"]),
            has_token=row["token_hash"] is not None,
        )

    async def get(self, agent_id: str) -> Agent | None:
        row = await self._db.fetchone("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return self._agent(row) if row else None

    async def for_token_hash(self, token_hash: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT agent_id FROM agents WHERE token_hash = ?", (token_hash,)
        )
        return str(row["agent_id"]) if row else None

    async def list(self) -> list[Agent]:
        rows = await self._db.fetchall("SELECT * FROM agents ORDER BY agent_id")
        return [self._agent(row) for row in rows]
