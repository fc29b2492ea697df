"""The lima driver's channel: one agent per VM, the agent copied once, login noise dropped."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from guest_runtime.client import ExecHandle, GuestClient
from guest_runtime.errors import GuestUnreachable
from tests.conformance.conftest import spec
from tests.conformance.running import LIST_PROCESSES, run
from tests.fakes.lima import SHARED_INSTANCE, calls, fake_limactl
from vm_drivers.lima import LimaDriver

from .conftest import MakeDriver

pytestmark = pytest.mark.anyio


async def started(client: GuestClient, command: str) -> ExecHandle:
    """Start ``command`` (which prints "started" first) and wait until it has."""
    handle = await client.start_exec(command)
    with anyio.fail_after(30):
        async for event in handle.events():
            if getattr(event, "data", b"") == b"started\n":
                return handle
    raise AssertionError(f"{command!r} ended before it printed 'started'")


async def instance_processes(home: Path, instance: str) -> str:
    """Every process in the instance, seen from outside any project sandbox."""
    return await fake_limactl(home, "shell", instance, "sh", "-c", LIST_PROCESSES)


@pytest.fixture(params=["per-project", "shared"])
async def any_mode(
    request: pytest.FixtureRequest, make_driver: MakeDriver, lima_home: Path
) -> LimaDriver:
    if request.param == "shared":
        await fake_limactl(lima_home, "create", f"--name={SHARED_INSTANCE}", "template:debian-12")
        await fake_limactl(lima_home, "start", SHARED_INSTANCE)
        return await make_driver(shared_instance=SHARED_INSTANCE)
    return await make_driver()


async def test_a_new_channel_ends_the_commands_of_the_previous_one(
    any_mode: LimaDriver, lima_home: Path
) -> None:
    driver = any_mode
    created = await driver.create_project_vm(spec())
    instance = driver.records.load(created.vm_id).instance
    async with GuestClient(await driver.open_channel(created.vm_id)) as first:
        handle = await started(first, "echo started; exec sleep 611")
        assert "sleep 611" in await instance_processes(lima_home, instance)
        async with GuestClient(await driver.open_channel(created.vm_id)) as second:
            with anyio.fail_after(30), pytest.raises(GuestUnreachable):
                async for _ in handle.events():
                    pass
            assert "sleep 611" not in await instance_processes(lima_home, instance)
            assert (await run(second, "echo still here"))[1] == b"still here\n"
    await driver.destroy_project_vm(created.vm_id)


async def test_a_fresh_driver_ends_the_agent_an_earlier_server_left_running(
    any_mode: LimaDriver, make_driver: MakeDriver, lima_home: Path
) -> None:
    earlier = any_mode
    created = await earlier.create_project_vm(spec())
    instance = earlier.records.load(created.vm_id).instance
    async with GuestClient(await earlier.open_channel(created.vm_id)) as old:
        handle = await started(old, "echo started; exec sleep 612")
        later = await make_driver(shared_instance=earlier.config.shared_instance)
        async with GuestClient(await later.open_channel(created.vm_id)) as new:
            with anyio.fail_after(30), pytest.raises(GuestUnreachable):
                async for _ in handle.events():
                    pass
            assert "sleep 612" not in await instance_processes(lima_home, instance)
            await new.hello()
    await later.destroy_project_vm(created.vm_id)


async def test_the_agent_is_copied_once_per_version(
    make_driver: MakeDriver, shared_home: Path
) -> None:
    driver = await make_driver(shared_instance=SHARED_INSTANCE)
    first = await driver.create_project_vm(spec())
    second = await driver.create_project_vm(spec())
    for vm_id in (first.vm_id, second.vm_id, first.vm_id):
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            await client.hello()
    copies = [argv for argv in calls(shared_home) if argv[0] == "copy"]
    assert len(copies) == 1
    # Into Lima's user's home: the agents' directory is root's, and the launcher moves it there.
    assert copies[0][-1].startswith(f"{SHARED_INSTANCE}:projectvm-agent-")
    assert copies[0][-1].endswith(".pyz.incoming")
    for vm_id in (first.vm_id, second.vm_id):
        await driver.destroy_project_vm(vm_id)


async def test_what_a_login_profile_prints_does_not_reach_the_agents_channel(
    driver: LimaDriver, lima_home: Path
) -> None:
    created = await driver.create_project_vm(spec())
    instance = driver.records.load(created.vm_id).instance
    await fake_limactl(
        lima_home, "shell", instance, "sh", "-c", "echo 'echo Welcome to the VM' >> ~/.profile"
    )
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        await client.hello()
        assert (await run(client, "echo ok"))[1] == b"ok\n"
    assert "Welcome to the VM" in await driver.log_tail(created.vm_id)
    await driver.destroy_project_vm(created.vm_id)


async def test_a_channel_to_a_stopped_vm_is_refused_with_what_to_do(driver: LimaDriver) -> None:
    created = await driver.create_project_vm(spec())
    await driver.stop_project_vm(created.vm_id)
    with pytest.raises(GuestUnreachable, match="start it first"):
        await driver.open_channel(created.vm_id)
    await driver.destroy_project_vm(created.vm_id)
