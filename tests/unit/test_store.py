"""The SQLite store: schema, durability settings, migrations, and the audit trail."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from server.liveness import this_server_id
from server.models import Execution, ExecutionStatus, Project, ProjectType, VMStatus
from server.store import SCHEMA_VERSION, Store, utcnow

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


async def test_a_new_database_has_every_table_wal_and_full_sync(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        assert await store.schema_version() == SCHEMA_VERSION
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
            "schema_version",
        } <= tables
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_keeps_data_and_does_not_migrate_twice(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with await Store.open(path) as store:
        await store.ensure_agent("alice")
        await store.insert_project(project())
    async with await Store.open(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        loaded = await store.get_project("prj_1")
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


async def test_executions_are_recorded_and_finished(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await store.ensure_agent("alice")
        await store.insert_project(project())
        await store.insert_execution(execution("exe_1"), this_server_id())
        running = await store.get_execution("exe_1")
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
        await store.finish_execution(done)
        [listed] = await store.list_executions("prj_1")
        assert (listed.status, listed.exit_code, listed.output) == (
            ExecutionStatus.COMPLETED,
            3,
            "hi\n",
        )
        kinds = [e.kind for e in await store.list_events("prj_1")]
        assert kinds == [
            "project.created",
            "execution.queued",
            "execution.started",
            "execution.finished",
        ]


async def test_only_executions_of_dead_servers_are_marked_interrupted(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await store.ensure_agent("alice")
        await store.insert_project(project())
        await store.insert_execution(execution("exe_mine"), this_server_id())
        await store.insert_execution(execution("exe_gone"), "somehost:1:1")
        count = await store.interrupt_orphaned_executions(
            "server went away", lambda server: server == this_server_id()
        )
        assert count == 1
        gone = await store.get_execution("exe_gone")
        mine = await store.get_execution("exe_mine")
        assert gone is not None
        assert mine is not None
        assert gone.status == ExecutionStatus.INTERRUPTED
        assert gone.reason == "server went away"
        assert mine.status == ExecutionStatus.RUNNING


async def test_executions_outlive_their_project(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "db.sqlite") as store:
        await store.ensure_agent("alice")
        await store.insert_project(project())
        await store.insert_execution(execution("exe_1"), this_server_id())
        await store.delete_project("prj_1", "alice")
        assert await store.get_project("prj_1") is None
        assert await store.get_execution("exe_1") is not None
