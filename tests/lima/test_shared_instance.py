"""Shared mode: projects as bubblewrap sandboxes inside one Lima instance (LIMA_INSTANCE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_runtime.client import GuestClient
from tests.conformance.conftest import spec
from tests.conformance.running import run
from tests.fakes.lima import SHARED_INSTANCE, calls, fake_limactl
from vm_drivers.base import LABEL_PROJECT, VMStatus
from vm_drivers.errors import DriverUnavailable, GuestUnreachable
from vm_drivers.lima import LimaDriver

from .conftest import MakeDriver

pytestmark = pytest.mark.anyio


@pytest.fixture
async def shared(make_driver: MakeDriver, shared_home: Path) -> LimaDriver:
    return await make_driver(shared_instance=SHARED_INSTANCE)


async def shell_output(driver: LimaDriver, vm_id: str, command: str) -> tuple[int | None, str]:
    async with GuestClient(await driver.open_channel(vm_id)) as client:
        exit_info, out, err, _ = await run(client, command)
    return exit_info.exit_code, (out + err).decode()


async def test_projects_in_the_shared_instance_cannot_see_each_other(
    shared: LimaDriver, shared_home: Path
) -> None:
    first = await shared.create_project_vm(spec())
    second = await shared.create_project_vm(spec())
    async with GuestClient(await shared.open_channel(first.vm_id)) as client:
        await client.write_file("secret.txt", b"first's only")
    home = await fake_limactl(shared_home, "shell", SHARED_INSTANCE, "sh", "-c", "echo $HOME")
    secret = f"{home.strip()}/projectvm/vms/{first.vm_id}/workspace/secret.txt"
    # The file is there, seen from the instance itself ...
    assert await fake_limactl(shared_home, "shell", SHARED_INSTANCE, "cat", secret) == (
        "first's only"
    )
    # ... but not from the other project's sandbox, by path or by search.
    code, output = await shell_output(shared, second.vm_id, f"cat {secret}")
    assert code != 0
    assert "first's only" not in output
    search = "ls -A /home; find / -path /proc -prune -o -path /sys -prune -o -path /usr -prune"
    code, output = await shell_output(shared, second.vm_id, f"{search} -o -name secret.txt -print")
    assert "first's only" not in output
    assert "secret.txt" not in output
    for vm_id in (first.vm_id, second.vm_id):
        await shared.destroy_project_vm(vm_id)


@pytest.mark.parametrize(("network", "same"), [("none", False), ("egress", True)])
async def test_network_none_gives_the_sandbox_no_network_of_the_instance(
    shared: LimaDriver, shared_home: Path, network: str, same: bool
) -> None:
    created = await shared.create_project_vm(spec(network=network))
    instance_net = await fake_limactl(
        shared_home, "shell", SHARED_INSTANCE, "readlink", "/proc/self/ns/net"
    )
    _, sandbox_net = await shell_output(shared, created.vm_id, "readlink /proc/self/ns/net")
    assert (sandbox_net.strip() == instance_net.strip()) is same
    await shared.destroy_project_vm(created.vm_id)


async def test_stopping_a_project_leaves_the_shared_instance_running(
    shared: LimaDriver, shared_home: Path
) -> None:
    created = await shared.create_project_vm(spec())
    await shared.stop_project_vm(created.vm_id)
    assert await shared.get_vm_status(created.vm_id) == VMStatus.STOPPED
    with pytest.raises(GuestUnreachable, match="start it first"):
        await shared.open_channel(created.vm_id)
    assert not [argv for argv in calls(shared_home) if argv[:2] == ["stop", SHARED_INSTANCE]]
    await shared.start_project_vm(created.vm_id)
    assert await shared.get_vm_status(created.vm_id) == VMStatus.RUNNING
    await shared.destroy_project_vm(created.vm_id)


async def test_a_stopped_shared_instance_is_started_but_a_missing_one_never_made(
    shared: LimaDriver, shared_home: Path
) -> None:
    await fake_limactl(shared_home, "stop", SHARED_INSTANCE)
    created = await shared.create_project_vm(spec())
    assert await shared.get_vm_status(created.vm_id) == VMStatus.RUNNING
    await shared.destroy_project_vm(created.vm_id)
    await fake_limactl(shared_home, "delete", "-f", SHARED_INSTANCE)
    before = len(calls(shared_home))
    with pytest.raises(DriverUnavailable, match="limactl start --name=shared"):
        await shared.create_project_vm(spec())
    assert not [argv for argv in calls(shared_home)[before:] if argv[0] in ("start", "create")]
    assert "shared" not in await fake_limactl(shared_home, "list", "-q", check=False)
    assert not (await shared.probe()).usable


async def test_a_project_directory_without_its_record_is_listed_and_destroyed(
    shared: LimaDriver,
) -> None:
    wanted = spec()
    created = await shared.create_project_vm(wanted)
    shared.records.delete(created.vm_id)
    [stray] = [info for info in await shared.list_vms() if info.vm_id == created.vm_id]
    assert stray.labels[LABEL_PROJECT] == wanted.project_id
    await shared.destroy_project_vm(created.vm_id)
    assert created.vm_id not in {info.vm_id for info in await shared.list_vms()}


async def test_without_a_sandbox_the_agent_still_works_in_the_project_directory(
    make_driver: MakeDriver, shared_home: Path
) -> None:
    driver = await make_driver(shared_instance=SHARED_INSTANCE, shared_sandbox="none")
    created = await driver.create_project_vm(spec())
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        info = await client.hello()
        assert info.root.endswith(f"/projectvm/vms/{created.vm_id}/workspace")
        await client.write_file("a.txt", b"a")
        assert (await run(client, "cat a.txt"))[1] == b"a"
    probe = await driver.probe()
    assert probe.usable
    assert "shared_sandbox: none" in probe.details["confinement"]
    await driver.destroy_project_vm(created.vm_id)
