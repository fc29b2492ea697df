"""`kill -9` of the server mid-burst: nothing acknowledged is lost, nothing is left dangling."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from server.domain.models import ExecutionStatus, VMStatus
from server.store import Store
from tests.helpers import call, issue_token
from tests.servers import http_client, serve_process
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio


async def test_a_killed_server_loses_nothing_acknowledged_and_reconciles_on_restart(
    data_dir: Path, requires_bwrap: None
) -> None:
    data_dir.mkdir(parents=True)
    async with await Store.open(data_dir / "projectvm.db") as store:
        token = await issue_token(store, "alice")
    acknowledged: list[str] = []
    written: dict[str, str] = {}

    async with serve_process(data_dir) as (process, url):
        async with http_client(url, token) as client:
            kept = (await call(client, "create_project", name="kept"))["project_id"]
            doomed = await call(client, "create_project", name="vm will vanish")
            long_running = (
                await call(client, "run_command", project_id=kept, command="sleep 600", wait_s=0)
            )["execution_id"]

        enough = anyio.Event()

        async def burst(worker: int) -> None:
            try:
                async with http_client(url, token) as client:
                    for number in range(1000):
                        ran = await call(
                            client,
                            "run_command",
                            project_id=kept,
                            command=f"echo {worker}-{number}",
                        )
                        acknowledged.append(ran["execution_id"])
                        path = f"w{worker}/{number}.txt"
                        done = await call(
                            client,
                            "write_file",
                            project_id=kept,
                            path=path,
                            content=f"{worker}-{number}",
                        )
                        written[path] = done["sha256"]
                        if len(acknowledged) >= 24:
                            enough.set()
            except (MCPError, AssertionError, OSError, ExceptionGroup):
                if not enough.is_set():
                    raise  # a failure before the kill is a real one
                return  # the server was killed under this client, as the test intends

        async def killer() -> None:
            await enough.wait()
            process.kill()  # SIGKILL: no shutdown code runs

        with anyio.fail_after(180):
            async with anyio.create_task_group() as group:
                for worker in range(4):
                    group.start_soon(burst, worker)
                group.start_soon(killer)

    # Behind the dead server's back, the second project's VM disappears entirely.
    drivers = DriverSet(DriverContext.for_data_dir(data_dir))
    await drivers.get("local").destroy_project_vm(doomed["vm_id"])
    await drivers.aclose()

    async with await Store.open(data_dir / "projectvm.db") as store:
        assert await store.integrity_check() == "ok"

    async with serve_process(data_dir) as (_, url), http_client(url, token) as client:
        history = await call(client, "get_execution_history", project_id=kept, limit=1000)
        by_id = {r["execution_id"]: r for r in history["executions"]}
        assert set(acknowledged) <= set(by_id)
        assert all(by_id[e]["status"] == "completed" for e in acknowledged)
        assert by_id[long_running]["status"] == "interrupted"
        assert not [r for r in history["executions"] if r["status"] in ("queued", "running")]
        for path, sha in written.items():
            assert (await call(client, "read_file", project_id=kept, path=path))["sha256"] == sha
        projects = {p["project_id"]: p for p in (await call(client, "list_projects"))["projects"]}
        assert projects[kept]["status"] == "running"
        assert projects[doomed["project_id"]]["status"] == "failed"
        assert "no longer exists" in projects[doomed["project_id"]]["status_reason"]
        ran = await call(client, "run_command", project_id=kept, command="echo alive")
        assert ran["stdout"] == "alive\n"

    async with await Store.open(data_dir / "projectvm.db") as store:
        assert await store.integrity_check() == "ok"
        for project in await store.projects.list():
            if project.vm_status == VMStatus.RUNNING:
                assert project.vm_id is not None
        stuck = await store.executions.page(
            kept, statuses=[ExecutionStatus.RUNNING, ExecutionStatus.QUEUED], limit=1000
        )
        assert stuck == []
