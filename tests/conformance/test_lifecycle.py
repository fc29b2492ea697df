"""Lifecycle: create, stop, start, destroy, inventory, and persistence of the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guest_runtime.client import GuestClient
from vm_drivers.base import LABEL_PROJECT, DriverContext, VMDriver, VMStatus
from vm_drivers.errors import GuestUnreachable, VMNotFound
from vm_drivers.registry import DriverSet

from .conftest import TEST_LABEL, spec

pytestmark = pytest.mark.anyio


async def test_a_created_vm_runs_and_is_listed_with_its_labels(driver: VMDriver) -> None:
    wanted = spec()
    created = await driver.create_project_vm(wanted)
    try:
        assert created.status == VMStatus.RUNNING
        assert await driver.get_vm_status(created.vm_id) == VMStatus.RUNNING
        [info] = [v for v in await driver.list_vms() if v.vm_id == created.vm_id]
        assert info.project_id == wanted.project_id
        assert info.labels[LABEL_PROJECT] == wanted.project_id
        assert info.labels[TEST_LABEL] == "1"
    finally:
        await driver.destroy_project_vm(created.vm_id)
    assert created.vm_id not in {v.vm_id for v in await driver.list_vms()}
    with pytest.raises(VMNotFound):
        await driver.get_vm_status(created.vm_id)
    await driver.destroy_project_vm(created.vm_id)  # destroying twice is not an error


async def test_the_workspace_survives_stop_and_start(driver: VMDriver, vm: str) -> None:
    async with GuestClient(await driver.open_channel(vm)) as client:
        await client.write_file("notes/keep.txt", b"still here\n")
    await driver.stop_project_vm(vm)
    assert await driver.get_vm_status(vm) == VMStatus.STOPPED
    with pytest.raises(GuestUnreachable):
        await driver.open_channel(vm)
    await driver.start_project_vm(vm)
    assert await driver.get_vm_status(vm) == VMStatus.RUNNING
    async with GuestClient(await driver.open_channel(vm)) as client:
        assert (await client.read_file("notes/keep.txt")).data == b"still here\n"


async def test_stopping_ends_the_channel_and_its_commands(driver: VMDriver, vm: str) -> None:
    async with GuestClient(await driver.open_channel(vm)) as client:
        handle = await client.start_exec("sleep 300")
        await driver.stop_project_vm(vm)
        with pytest.raises(GuestUnreachable):
            async for _ in handle.events():
                pass
        assert client.closed


async def test_a_new_driver_instance_finds_the_vm_and_its_files(
    driver: VMDriver,
    vm: str,
    data_dir: Path,
    driver_name: str,
    driver_options: dict[str, dict[str, Any]],
) -> None:
    async with GuestClient(await driver.open_channel(vm)) as client:
        await client.write_file("persist.bin", bytes(range(256)))
    name = driver_name
    fresh = DriverSet(DriverContext.for_data_dir(data_dir), driver_options)
    try:
        restarted = fresh.get(name)
        assert vm in {v.vm_id for v in await restarted.list_vms()}
        async with GuestClient(await restarted.open_channel(vm)) as client:
            assert (await client.read_file("persist.bin")).data == bytes(range(256))
    finally:
        await fresh.aclose()


async def test_a_second_channel_replaces_or_joins_the_first(driver: VMDriver, vm: str) -> None:
    async with GuestClient(await driver.open_channel(vm)) as first:
        await first.write_file("a.txt", b"a")
    async with GuestClient(await driver.open_channel(vm)) as second:
        assert (await second.read_file("a.txt")).data == b"a"


async def test_unknown_vms_are_reported_as_not_found(driver: VMDriver) -> None:
    with pytest.raises(VMNotFound):
        await driver.get_vm_status("pvm-prj_doesnotexist")
    with pytest.raises(VMNotFound):
        await driver.start_project_vm("pvm-prj_doesnotexist")


async def test_probe_says_usable_with_a_reason(driver: VMDriver) -> None:
    availability = await driver.probe()
    assert availability.usable
    assert availability.reason


async def test_stats_report_cpu_memory_and_disk(guest: GuestClient) -> None:
    stats = await guest.stats()
    assert (stats.cpu_count or 0) >= 1
    assert (stats.memory_used_bytes or 0) > 0
    assert (stats.disk_total_bytes or 0) > 0
    usage = await guest.usage()
    await guest.write_file("big.bin", b"x" * 200_000)
    assert (await guest.usage()).used_bytes >= usage.used_bytes + 200_000
