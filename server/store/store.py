"""``Store``: the database and its repositories, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

from server.store.agents import AgentsRepo
from server.store.database import SCHEMA_VERSION, Database
from server.store.events import EventsRepo
from server.store.executions import ExecutionsRepo
from server.store.locks import LocksRepo
from server.store.members import MembersRepo
from server.store.projects import ProjectsRepo

__all__ = ["SCHEMA_VERSION", "Store"]


class Store:
    """Open with ``async with await Store.open(path) as store``.

    Reads go through the repositories directly; writes only inside ``store.transaction()``.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path
        self.agents = AgentsRepo(db)
        self.projects = ProjectsRepo(db)
        self.members = MembersRepo(db)
        self.executions = ExecutionsRepo(db)
        self.events = EventsRepo(db)
        self.locks = LocksRepo(db)

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_s: float = 10.0) -> Self:
        return cls(await Database.open(path, busy_timeout_s=busy_timeout_s))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.db.aclose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        async with self.db.transaction():
            yield self

    async def integrity_check(self) -> str:
        return await self.db.integrity_check()
