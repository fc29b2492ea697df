"""The SQLite connection (aiosqlite): durable, serialised writes and shared reads.

One connection per server, WAL journal, ``synchronous=FULL``: a change is on disk before the call
that made it returns. Writes happen only inside :meth:`Database.transaction` (an immediate
transaction, one at a time); a write outside one is a bug and raises. Reads share the connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite
import anyio

from server.domain.errors import StoreBusy
from server.store.migrations import MIGRATIONS

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "StoreTransactionError",
    "dt",
    "required_dt",
    "ts",
    "utcnow",
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def required_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class StoreTransactionError(RuntimeError):
    """A write was attempted outside a transaction of the task that holds it (a bug)."""


class Database:
    """Open with ``await Database.open(path)``; close with ``aclose``."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._write_lock = anyio.Lock()
        self._writer: object | None = None  # the task inside the open transaction

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
            database = cls(connection, path)
            await database._migrate()
        except BaseException:
            await connection.close()
            raise
        return database

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
            async with self.transaction():
                for statement in statements:
                    await self.write(statement)
                await self.write("DELETE FROM schema_version")
                await self.write("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
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
            self._writer = anyio.get_current_task().id
            try:
                yield
                with anyio.CancelScope(shield=True):
                    await self._db.execute("COMMIT")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    if self._db.in_transaction:
                        await self._db.execute("ROLLBACK")
                raise
            finally:
                self._writer = None

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement of the current task's transaction; returns the rows it changed."""
        if self._writer is None or self._writer != anyio.get_current_task().id:
            raise StoreTransactionError(
                "a write outside a transaction: wrap it in `async with store.transaction()`"
            )
        cursor = await self._db.execute(sql, params)
        try:
            return cursor.rowcount
        finally:
            await cursor.close()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def integrity_check(self) -> str:
        row = await self.fetchone("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"
