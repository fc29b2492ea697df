"""The SQLite store: schema, durability settings, migrations, and the audit trail."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from server.core.liveness import this_server_id
from server.domain.models import (
    AccessLevel,
    Execution,
    ExecutionStatus,
    PathLock,
    Project,
    ProjectType,
    VMStatus,
)
from server.store import SCHEMA_VERSION, Store, StoreTransactionError, utcnow

pytestmark = pytest.mark.anyio


def project(project_id: str = "prj_1", owner: str = "alice") -> Project:
    now = utcnow()
    return Project(
        project_id=project_id,
        name="demo",
        project_type=ProjectType.DEVELOPMENT,
        driver="local",
        vm_id=None,
        vm_status=VMStatus.CREATING,
        owner_id=owner,
        created_at=now,
        updated_at=now,
    )


def execution(execution_id: str, project_id: str = "prj_1") -> Execution:
    return Execution(
        execution_id=execution_id,
        project_id=project_id,
        agent_id="alice",
        command="echo hi",
        status=ExecutionStatus.RUNNING,
        queued_at=utcnow(),
        started_at=utcnow(),
    )


async def with_project(store: Store) -> None:
    async with store.transaction():
        await store.agents.ensure("alice")
        await store.projects.insert(project())
        await store.members.set("prj_1", "alice", AccessLevel.ADMIN, "alice")


async def test_a_new_database_has_every_table_wal_and_full_sync(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        assert await store.db.schema_version() == SCHEMA_VERSION
        assert await store.integrity_check() == "ok"
    with sqlite3.connect(tmp_path / "db.sqlite") as raw:
        tables = {
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {
            "users",
            "agents",
            "projects",
            "project_agents",
            "project_executions",
            "events",
            "path_locks",
            "schema_version",
        } <= tables
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_keeps_data_and_does_not_migrate_twice(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with await Store.open(path) as store:
        await with_project(store)
    async with await Store.open(path) as store:
        assert await store.db.schema_version() == SCHEMA_VERSION
        loaded = await store.projects.get("prj_1")
        assert loaded is not None
        assert loaded.agents == ["alice"]


async def test_a_database_from_a_newer_projectvm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with await Store.open(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this ProjectVM"):
        await Store.open(path)


async def test_a_write_outside_a_transaction_is_refused(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        with pytest.raises(StoreTransactionError, match="outside a transaction"):
            await store.agents.ensure("alice")
        assert await store.agents.get("alice") is None


async def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:

        async def fail_half_way() -> None:
            async with store.transaction():
                await store.agents.ensure("alice")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await fail_half_way()
        assert await store.agents.get("alice") is None


async def test_executions_are_recorded_and_finished_and_no_event_is_written_for_them(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await with_project(store)
        async with store.transaction():
            await store.executions.insert(execution("exe_1"), this_server_id())
        running = await store.executions.get("exe_1")
        assert running is not None
        assert running.status == ExecutionStatus.RUNNING
        done = running.model_copy(
            update={
                "status": ExecutionStatus.COMPLETED,
                "exit_code": 3,
                "output": "hi\n",
                "completed_at": utcnow() + timedelta(seconds=1),
                "duration_ms": 1000,
            }
        )
        async with store.transaction():
            await store.executions.finish(done)
        [listed] = await store.executions.page("prj_1")
        assert (listed.status, listed.exit_code, listed.output) == (
            ExecutionStatus.COMPLETED,
            3,
            "hi\n",
        )
        [without] = await store.executions.page("prj_1", include_output=False)
        assert (without.output, without.error_output, without.exit_code) == (None, None, 3)
        # The store records what it is told, nothing more: events are the caller's to write.
        assert await store.events.after("prj_1") == []


async def test_executions_are_paged_by_their_position_in_either_order(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await with_project(store)
        async with store.transaction():
            for number in range(7):
                await store.executions.insert(execution(f"exe_{number}"), this_server_id())
        newest = await store.executions.page("prj_1", limit=3)
        assert [e.execution_id for e in newest] == ["exe_6", "exe_5", "exe_4"]
        older = await store.executions.page("prj_1", before_seq=newest[-1].seq, limit=3)
        assert [e.execution_id for e in older] == ["exe_3", "exe_2", "exe_1"]
        oldest = await store.executions.page("prj_1", order="oldest_first", after_seq=4)
        assert [e.execution_id for e in oldest] == ["exe_4", "exe_5", "exe_6"]


async def test_reading_locks_leaves_expired_ones_in_place_until_purged(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await with_project(store)
        now = utcnow()
        expired = PathLock(
            path="a", agent_id="alice", acquired_at=now, expires_at=now - timedelta(seconds=1)
        )
        live = PathLock(
            path="b", agent_id="alice", acquired_at=now, expires_at=now + timedelta(hours=1)
        )
        async with store.transaction():
            await store.locks.put("prj_1", expired)
            await store.locks.put("prj_1", live)
        assert [lock.path for lock in await store.locks.live("prj_1", utcnow())] == ["b"]
        with sqlite3.connect(store.path) as raw:
            assert raw.execute("SELECT COUNT(*) FROM path_locks").fetchone()[0] == 2
        async with store.transaction():
            await store.locks.purge_expired("prj_1", utcnow())
        with sqlite3.connect(store.path) as raw:
            assert raw.execute("SELECT COUNT(*) FROM path_locks").fetchone()[0] == 1


async def test_executions_outlive_their_project(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await with_project(store)
        async with store.transaction():
            await store.executions.insert(execution("exe_1"), this_server_id())
            await store.projects.delete("prj_1")
        assert await store.projects.get("prj_1") is None
        assert await store.executions.get("exe_1") is not None
