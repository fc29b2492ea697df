"""The ProjectVM server on the fly driver, over MCP: the fake Fly API served on a local port."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.domain.models import VMStatus
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.fakes.fake_fly import FakeFlyMachinesAPI
from tests.helpers import call

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fly_server(
    fake_fly: FakeFlyMachinesAPI, data_dir: Path
) -> AsyncIterator[tuple[Client, ServerHandle]]:
    options = fake_fly.driver_options(await fake_fly.serve_http())
    config = ServerConfig.load(data_dir, driver="fly", drivers={"fly": options})
    handle = build_server(config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        yield client, handle


async def test_a_project_on_fly_runs_stops_starts_and_is_deleted_over_mcp(
    fly_server: tuple[Client, ServerHandle], fake_fly: FakeFlyMachinesAPI
) -> None:
    client, _ = fly_server
    project_id = (await call(client, "create_project", name="on-fly"))["project_id"]
    await call(client, "write_file", project_id=project_id, path="a.txt", content="hello fly\n")
    result = await call(client, "run_command", project_id=project_id, command="cat a.txt; pwd")
    assert result["exit_code"] == 0
    assert result["stdout"] == "hello fly\n/workspace\n"
    await call(client, "stop_project", project_id=project_id)
    [machine] = fake_fly.live_machines()
    assert machine.state == "stopped"
    await call(client, "start_project", project_id=project_id)
    read = await call(client, "read_file", project_id=project_id, path="a.txt")
    assert read["content"] == "hello fly\n"
    await call(client, "delete_project", project_id=project_id)
    assert fake_fly.apps == {}
    assert fake_fly.volumes == {}


async def test_an_idle_project_on_fly_sleeps_and_wakes_with_its_files(
    fly_server: tuple[Client, ServerHandle],
) -> None:
    client, handle = fly_server
    assert handle.state is not None
    service = handle.state.service
    project_id = (
        await call(client, "create_project", name="sleepy", settings={"auto_sleep_minutes": 0.02})
    )["project_id"]
    payload = base64.b64encode(b"\x00kept\xff").decode()
    await call(
        client,
        "write_file",
        project_id=project_id,
        path="d.bin",
        content=payload,
        encoding="base64",
    )
    with anyio.fail_after(120):
        while True:
            changed = service.hub.changed(project_id)
            project = await service.store.projects.get(project_id)
            assert project is not None
            if project.vm_status == VMStatus.STOPPED:
                break
            await changed.wait()
    read = await call(client, "read_file", project_id=project_id, path="d.bin", encoding="base64")
    assert read["content"] == payload
    await call(client, "delete_project", project_id=project_id)
