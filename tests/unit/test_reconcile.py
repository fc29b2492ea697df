"""After a restart: executions of dead server processes are interrupted, live ones untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.core.liveness import this_server_id
from server.core.reconcile import ORPHAN_REASON, Reconciler
from server.core.service import ProjectService
from server.domain.models import AccessLevel, Execution, ExecutionStatus
from server.store import Store, utcnow
from tests.unit.test_store import project
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio


def running(execution_id: str) -> Execution:
    return Execution(
        execution_id=execution_id,
        project_id="prj_1",
        agent_id="alice",
        command="sleep 1",
        status=ExecutionStatus.RUNNING,
        queued_at=utcnow(),
        started_at=utcnow(),
    )


async def test_only_executions_of_dead_servers_are_marked_interrupted(tmp_path: Path) -> None:
    drivers = DriverSet(DriverContext.for_data_dir(tmp_path))
    async with await Store.open(tmp_path / "db.sqlite") as store:
        async with store.transaction():
            await store.agents.ensure("alice")
            await store.projects.insert(project())
            await store.members.set("prj_1", "alice", AccessLevel.ADMIN, "alice")
            await store.executions.insert(running("exe_mine"), this_server_id())
            # A server on this host whose process is gone (pid 1 never has these start ticks).
            await store.executions.insert(
                running("exe_gone"), f"{this_server_id().split(':')[0]}:1:1"
            )
        service = ProjectService(store, drivers, "process")
        count = await Reconciler(store, service.lifecycle).interrupt_orphaned_executions()
        assert count == 1
        gone = await store.executions.get("exe_gone")
        mine = await store.executions.get("exe_mine")
        assert gone is not None
        assert mine is not None
        assert (gone.status, gone.reason) == (ExecutionStatus.INTERRUPTED, ORPHAN_REASON)
        assert mine.status == ExecutionStatus.RUNNING
    await drivers.aclose()
