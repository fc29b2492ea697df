"""Idle projects go to sleep; the next call wakes them, with the workspace as it was."""

from __future__ import annotations

import base64
import os
import time

import anyio
import pytest
from mcp import Client

from server.core.projects import Projects
from server.core.requests import WriteFile
from server.core.results import ResourceUsage
from server.core.service import ProjectService
from server.domain.config import ServerConfig
from server.domain.models import Project, VMStatus
from server.surfaces.mcp.server import build_server
from tests.helpers import call

pytestmark = pytest.mark.anyio


async def wait_for_status(service: ProjectService, project_id: str, status: VMStatus) -> None:
    """Wait on the project's event feed (not a project call: calls count as activity)."""
    with anyio.fail_after(120):
        while True:
            changed = service.hub.changed(project_id)
            project = await service.store.projects.get(project_id)
            assert project is not None
            if project.vm_status == status:
                return
            await changed.wait()


async def test_an_idle_project_sleeps_and_any_call_wakes_it_with_its_files(
    driver_config: ServerConfig,
) -> None:
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        service = handle.state.service
        project = await call(
            client, "create_project", name="sleepy", settings={"auto_sleep_minutes": 0.05}
        )
        project_id = project["project_id"]
        try:
            payload = os.urandom(4096)
            await call(
                client,
                "write_file",
                project_id=project_id,
                path="data.bin",
                content=base64.b64encode(payload).decode(),
                encoding="base64",
            )

            await wait_for_status(service, project_id, VMStatus.STOPPED)
            listed = await call(client, "list_projects")
            [mine] = listed["projects"]
            assert mine["status"] == "stopped"
            assert mine["status_reason"].startswith("asleep")
            assert "after 0.05 min without activity" in mine["status_reason"]

            updates: list[str] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                updates.append(message or "")

            result = await client.call_tool(
                "read_file",
                {"project_id": project_id, "path": "data.bin", "encoding": "base64"},
                progress_callback=on_progress,
            )
            assert not result.is_error, result.content
            assert result.structured_content is not None
            assert base64.b64decode(result.structured_content["content"]) == payload
            assert any("waking" in message for message in updates)
            info = await call(client, "get_project", project_id=project_id)
            assert info["status"] == "running"
            kinds = [
                e["kind"]
                for e in (await call(client, "get_events", project_id=project_id))["events"]
            ]
            assert kinds.index("vm.slept") < kinds.index("vm.woken")
        finally:
            await call(client, "delete_project", project_id=project_id)


async def test_a_running_command_keeps_a_project_awake(driver_config: ServerConfig) -> None:
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        service = handle.state.service
        minutes = 0.02
        project_id = (
            await call(
                client, "create_project", name="busy", settings={"auto_sleep_minutes": minutes}
            )
        )["project_id"]
        try:
            # A command that runs until the test lets it end (no timing involved).
            started = await call(
                client,
                "run_command",
                project_id=project_id,
                command="while [ ! -e release ]; do sleep 0.05; done",
                wait_s=0,
            )
            assert started["status"] == "running"
            idle_deadline = time.monotonic() + minutes * 60
            # Every project due by the deadline has been looked at by the sleeper, after it.
            with anyio.fail_after(60):
                await service.sleeper.wait_for_round(started_after=idle_deadline)
            project = await service.store.projects.get(project_id)
            assert project is not None
            assert project.vm_status == VMStatus.RUNNING
            kinds = [e.kind for e in await service.store.events.after(project_id, 0, 1000)]
            assert "vm.slept" not in kinds
            # Once the command ends, nothing keeps the project awake any more.
            await service.act("alice", WriteFile(project_id=project_id, path="release", content=""))
            await wait_for_status(service, project_id, VMStatus.STOPPED)
        finally:
            await call(client, "delete_project", project_id=project_id)


async def test_watching_a_project_does_not_keep_it_awake(driver_config: ServerConfig) -> None:
    """Reading metadata, history and events is not activity: a dashboard polling a project
    (here: as fast as it can) and a reviewer long-polling its events never stop it sleeping."""
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        project_id = (
            await call(
                client, "create_project", name="watched", settings={"auto_sleep_minutes": 0.05}
            )
        )["project_id"]
        polls = 0
        try:
            with anyio.fail_after(120):
                async with anyio.create_task_group() as group:

                    async def long_poll_events() -> None:
                        since = 0
                        while True:
                            got = await call(
                                client,
                                "get_events",
                                project_id=project_id,
                                since_id=since,
                                wait_s=5,
                            )
                            since = got["last_event_id"]

                    group.start_soon(long_poll_events)
                    while True:
                        info = await call(client, "get_project", project_id=project_id)
                        await call(client, "get_execution_history", project_id=project_id)
                        await call(client, "list_members", project_id=project_id)
                        polls += 1
                        if info["status"] == "stopped":
                            break
                    group.cancel_scope.cancel()
            assert "asleep" in info["status_reason"]
            assert polls > 3
        finally:
            await call(client, "delete_project", project_id=project_id)


async def test_a_new_project_is_not_put_to_sleep_while_its_creation_call_is_answered(
    local_config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded host, measuring a new qemu VM's usage for create_project's answer took longer
    than the project's idle limit, and the sleeper put the VM to sleep before the call returned."""
    minutes = 0.02
    usage = Projects._usage
    measured = 0.0

    async def slow_usage(self: Projects, project: Project) -> ResourceUsage:
        nonlocal measured
        figures = await usage(self, project)
        await anyio.sleep(minutes * 60 * 1.5)  # a measurement slower than the idle limit
        measured = time.monotonic()
        return figures

    monkeypatch.setattr(Projects, "_usage", slow_usage)
    handle = build_server(local_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        service = handle.state.service
        settings = {"auto_sleep_minutes": minutes}
        project_id = (await call(client, "create_project", name="slow", settings=settings))[
            "project_id"
        ]
        try:
            # A sleeper round that began after the answer was ready has looked at the project.
            with anyio.fail_after(60):
                await service.sleeper.wait_for_round(started_after=measured)
            project = await service.store.projects.get(project_id)
            assert project is not None
            assert project.vm_status == VMStatus.RUNNING
            # It still sleeps once idle for the limit after the call.
            await wait_for_status(service, project_id, VMStatus.STOPPED)
            kinds = [e.kind for e in await service.store.events.after(project_id, 0, 1000)]
            assert kinds.count("vm.slept") == 1
        finally:
            monkeypatch.undo()
            await call(client, "delete_project", project_id=project_id)
