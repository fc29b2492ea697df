"""``max_storage_gb`` is a real limit (issue 9 finding 4: with a 10.7 MB limit one command wrote
52 MB and a detached writer kept going): where the driver makes the workspace a filesystem of
that size, nothing an agent does takes it past the limit by more than 1%."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from guest_runtime.client import GuestClient
from server.domain.config import ServerConfig
from server.surfaces.mcp.server import build_server
from tests.conformance.conftest import spec
from tests.helpers import call, call_error, eventually
from vm_drivers.base import DriverContext
from vm_drivers.errors import VMOperationFailed
from vm_drivers.host_process import HostVMRecord
from vm_drivers.kit.workspace_disk import disk_bytes
from vm_drivers.local import LocalDriver
from vm_drivers.registry import DriverSet
from vm_drivers.sandbox.launch import start_sandbox

pytestmark = pytest.mark.anyio

LIMIT_GB = 0.02
LIMIT = int(LIMIT_GB * 1024**3)
ALLOWED = LIMIT * 1.01
WRITER = (
    "nohup sh -c 'i=0; while :; do i=$((i+1)); head -c 1048576 /dev/zero > w$i; done' "
    ">/dev/null 2>&1 &"
)

Project = tuple[Client, str]


@pytest.fixture
async def small_project(driver_config: ServerConfig) -> AsyncIterator[Project]:
    """A project with max_storage_gb = 0.02 (skipped where the driver says it can only guard
    the limit, not make it a filesystem's)."""
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        driver = handle.state.service.drivers.get(driver_config.driver)
        storage = (await driver.probe()).details.get("storage", "")
        if storage.startswith("guard"):
            pytest.skip(f"{driver_config.driver} keeps the limit without a filesystem: {storage}")
        settings = {"max_storage_gb": LIMIT_GB}
        info = await call(client, "create_project", name="quota", settings=settings)
        try:
            yield client, info["project_id"]
        finally:
            await call(client, "delete_project", project_id=info["project_id"])


async def used(client: Client, project_id: str) -> int:
    usage = (await call(client, "get_project", project_id=project_id))["usage"]
    assert usage["max_storage_bytes"] == LIMIT
    return int(usage["workspace_bytes"])


async def run(client: Client, project_id: str, command: str) -> dict[str, object]:
    return await call(client, "run_command", project_id=project_id, command=command, timeout_s=60)


@pytest.mark.parametrize("server_backend", ["local", "docker"], indirect=True)
async def test_no_command_writer_or_api_call_takes_the_workspace_past_its_limit(
    small_project: Project,
) -> None:
    client, project_id = small_project
    dd = await run(client, project_id, "dd if=/dev/zero of=big bs=1M count=40")
    assert dd["exit_code"] != 0
    assert "No space left on device" in str(dd["stderr"])
    assert await used(client, project_id) <= ALLOWED

    await run(client, project_id, "rm -f big; echo small > small.txt")
    await run(client, project_id, WRITER)

    async def full() -> bool:
        return await used(client, project_id) > LIMIT * 0.8

    await eventually(full, what="the detached writer filling the workspace")
    for _ in range(3):  # the writer goes on trying; the workspace does not grow
        assert await used(client, project_id) <= ALLOWED
        inside = await run(client, project_id, "du -sk /workspace | cut -f1")
        assert int(str(inside["stdout"]).strip()) * 1024 <= ALLOWED

    megabytes = "y" * (3 * 1024 * 1024)
    await call_error(client, "write_file", project_id=project_id, path="api.txt", content=megabytes)
    await call_error(
        client, "write_file", project_id=project_id, path="small.txt", content=megabytes,
        append=True,
    )  # fmt: skip
    await call_error(
        client,
        "edit_file",
        project_id=project_id,
        path="small.txt",
        edits=[{"old_text": "small", "new_text": megabytes}],
    )
    # A move may need a directory block the full disk does not have: it may fail, not grow.
    await client.call_tool(
        "move_path", {"project_id": project_id, "source": "small.txt", "destination": "moved.txt"}
    )
    assert await used(client, project_id) <= ALLOWED

    # The server stays healthy and the project usable: stop the writer, free space, write.
    alive = await run(client, project_id, "pkill -f '[w]hile :' ; rm -f w*; echo alive")
    assert str(alive["stdout"]).strip().endswith("alive")
    await call(client, "write_file", project_id=project_id, path="after.txt", content="fits")
    assert (await call(client, "read_file", project_id=project_id, path="after.txt"))[
        "content"
    ].startswith("fits")


@pytest.mark.parametrize("server_backend", ["local", "docker"], indirect=True)
async def test_without_a_disk_the_guard_stops_a_detached_writer(
    driver_config: ServerConfig,
) -> None:
    """Where no disk image can be mounted (here: workspace_disks off), the driver says so and
    stops a sandbox's writers once the workspace grows past the limit."""
    name = driver_config.driver
    options = {**driver_config.drivers.get(name, {}), "workspace_disks": "off"}
    config = driver_config.model_copy(update={"drivers": {**driver_config.drivers, name: options}})
    handle = build_server(config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        storage = (await handle.state.service.drivers.get(name).probe()).details["storage"]
        assert storage.startswith("guard")
        info = await call(
            client, "create_project", name="guarded", settings={"max_storage_gb": LIMIT_GB}
        )
        project_id = info["project_id"]
        try:
            slow_writer = WRITER.replace("done'", "sleep 0.05; done'")
            await run(client, project_id, slow_writer)

            async def writer_stopped() -> bool:
                found = await run(client, project_id, "pgrep -f '[w]hile :' || echo none")
                return str(found["stdout"]).strip() == "none"

            await eventually(writer_stopped, timeout=60, what="the guard stopping the writer")
            assert await used(client, project_id) > LIMIT
            refused = await run(client, project_id, "head -c 1000 /dev/zero > more.bin")
            assert refused["exit_code"] != 0
            await run(client, project_id, "rm -f w* more.bin")
            await call(client, "write_file", project_id=project_id, path="after.txt", content="ok")
        finally:
            await call(client, "delete_project", project_id=project_id)


@pytest.mark.parametrize("server_backend", ["local", "docker"], indirect=True)
async def test_the_workspace_disk_is_remounted_grown_and_removed_with_its_vm(
    driver_config: ServerConfig,
) -> None:
    drivers = DriverSet(DriverContext.for_data_dir(driver_config.data_dir), driver_config.drivers)
    driver = drivers.get(driver_config.driver)
    if not (await driver.probe()).details.get("storage", "").startswith("filesystem"):
        await drivers.aclose()
        pytest.skip(f"no workspace disks on {driver_config.driver} here")
    wanted = spec(disk_gb=0.01)
    created = await driver.create_project_vm(wanted)
    image = _disk_image(driver_config, created.vm_id)
    try:
        assert image.stat().st_size == disk_bytes(0.01)
        async with GuestClient(await driver.open_channel(created.vm_id)) as guest:
            await guest.write_file("kept.txt", b"kept\n")
            before = await _size_inside(guest)
        await driver.stop_project_vm(created.vm_id)
        # A host reboot: nothing is mounted any more.
        await anyio.run_process(["umount", str(image.parent / created.vm_id)], check=False)
        await driver.start_project_vm(created.vm_id, wanted.model_copy(update={"disk_gb": 0.03}))
        async with GuestClient(await driver.open_channel(created.vm_id)) as guest:
            assert (await guest.read_file("kept.txt")).data == b"kept\n"
            assert await _size_inside(guest) > before * 2
        assert image.stat().st_size == disk_bytes(0.03)
    finally:
        await driver.destroy_project_vm(created.vm_id)
        await drivers.aclose()
    assert not image.exists()
    attached = await anyio.run_process(["losetup", "-j", str(image)], check=False)
    assert attached.stdout.strip() == b""
    assert str(image) not in Path("/proc/self/mountinfo").read_text()


def _disk_image(config: ServerConfig, vm_id: str) -> Path:
    if config.driver == "local":
        return config.data_dir / "local" / "disks" / f"{vm_id}.ext4"
    return config.data_dir / "docker" / "disks" / f"{vm_id}.ext4"


async def _size_inside(guest: GuestClient) -> int:
    handle = await guest.start_exec("df -k --output=size /workspace | tail -1")
    output = b""
    async for event in handle.events():
        output += getattr(event, "data", b"")
    return int(output.strip()) * 1024


@pytest.mark.parametrize("server_backend", ["local"], indirect=True)
async def test_a_sandbox_never_starts_on_a_workspace_disk_that_is_not_mounted(
    driver_config: ServerConfig,
) -> None:
    """The last line of defence: were the disk not mounted, the sandbox would write to the
    host's disk without a limit; it refuses to start instead."""
    drivers = DriverSet(DriverContext.for_data_dir(driver_config.data_dir), driver_config.drivers)
    driver = drivers.get("local")
    assert isinstance(driver, LocalDriver)
    if not driver.identity.privileged:
        await drivers.aclose()
        pytest.skip("only a root server stages sandboxes and has workspace disks")
    try:
        workspace = driver_config.data_dir / "unmounted"
        workspace.mkdir()
        agent = driver_config.data_dir / "agent.pyz"
        agent.write_text("")
        record = HostVMRecord.model_validate(
            {
                "vm_id": "pvm-unmounted",
                "project_id": "unmounted",
                "name": "unmounted",
                "state": "running",
                "network": "none",
                "created_at": "2020-01-01T00:00:00Z",
                "labels": {},
                "workspace_disk": True,
            }
        )
        plan = driver._plan(record, agent, driver_config.data_dir / "state", workspace)
        with pytest.raises(VMOperationFailed, match="workspace disk is not mounted"):
            await start_sandbox(plan, lambda argv: argv, driver_config.data_dir / "log", None)
    finally:
        await drivers.aclose()
