"""Idle projects go to sleep; the next call wakes them, with the workspace as it was."""

from __future__ import annotations

import base64
import os

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.config import ServerConfig
from server.models import VMStatus
from server.service import ProjectService
from tests.helpers import call

pytestmark = pytest.mark.anyio


async def wait_for_status(service: ProjectService, project_id: str, status: VMStatus) -> None:
    """Wait on the project's event feed (not a project call: calls count as activity)."""
    with anyio.fail_after(120):
        while True:
            changed = service.events.changed(project_id)
            project = await service.store.get_project(project_id)
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
            assert "asleep after 0.05 min" in mine["status_reason"]

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
        project_id = (
            await call(client, "create_project", name="busy", settings={"auto_sleep_minutes": 0.02})
        )["project_id"]
        try:
            result = await call(client, "run_command", project_id=project_id, command="sleep 3")
            assert result["status"] == "completed"
            assert handle.state is not None
            events = await handle.state.service.store.list_events(project_id)
            assert "vm.slept" not in [e.kind for e in events]
        finally:
            await call(client, "delete_project", project_id=project_id)
