"""The driver's whole lifecycle on fake-firecracker (Firecracker's API and vsock, no VM).

Here KVM cannot run a guest, so the flows that need a guest agent saying hello — start after
stop, one channel per VM, sleep with memory, a restarted server, a VMM that dies — run against
:mod:`.fake_firecracker`, which serves the same API and vsock handshake with the real guest
agent as a host subprocess. What the real binary accepts is tested in
``test_real_firecracker.py``.
"""

from __future__ import annotations

import os
import signal
import stat

import anyio
import pytest

from guest_runtime.client import GuestClient
from vm_drivers.base import LABEL_PROJECT, VMSpec, VMStatus
from vm_drivers.errors import GuestUnreachable
from vm_drivers.firecracker.driver import FirecrackerDriver
from vm_drivers.firecracker.records import runtime_key

from .conftest import DriverFactory, vmm_processes

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

DEADLINE_S = 60


def spec(**overrides: object) -> VMSpec:
    values: dict[str, object] = {
        "project_id": f"prj_fake{os.urandom(4).hex()}",
        "name": "fake firecracker",
        "labels": {"projectvm.test": "1"},
        "disk_gb": 0.25,
    }
    values.update(overrides)
    return VMSpec.model_validate(values)


def key_of(driver: FirecrackerDriver, vm_id: str) -> str:
    return runtime_key(driver.context.instance_id, vm_id)


async def test_a_vm_is_created_used_stopped_started_and_destroyed_with_its_workspace(
    make_fake_driver: DriverFactory,
) -> None:
    driver = make_fake_driver(stop_timeout_s=10)
    wanted = spec()
    with anyio.fail_after(DEADLINE_S):
        created = await driver.create_project_vm(wanted)
        vm_id = created.vm_id
        assert created.status == VMStatus.RUNNING
        assert created.details == {"firecracker": "1.12.1"}
        assert await driver.get_vm_status(vm_id) == VMStatus.RUNNING
        [info] = await driver.list_vms()
        assert info.labels[LABEL_PROJECT] == wanted.project_id
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            await client.hello()
            await client.write_file("notes/keep.txt", b"still here\n")

        began = anyio.current_time()
        await driver.stop_project_vm(vm_id)
        # The agent's system.shutdown ended the "guest": no Ctrl-Alt-Del, no kill needed.
        assert anyio.current_time() - began < 10
        assert ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) not in [
            (e.method, e.path, e.body) for e in make_fake_driver.exchanges
        ]
        assert await driver.get_vm_status(vm_id) == VMStatus.STOPPED
        assert vmm_processes(f"pvm-{key_of(driver, vm_id)}") == []
        assert not (driver.runtime_base / f"pvm-{key_of(driver, vm_id)}").exists()
        with pytest.raises(GuestUnreachable, match="stopped; start it first"):
            await driver.open_channel(vm_id)

        await driver.start_project_vm(vm_id)
        assert await driver.get_vm_status(vm_id) == VMStatus.RUNNING
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            assert (await client.read_file("notes/keep.txt")).data == b"still here\n"

        await driver.destroy_project_vm(vm_id)
    assert await driver.list_vms() == []
    assert vmm_processes(f"pvm-{key_of(driver, vm_id)}") == []
    assert not driver.records.vm_dir(vm_id).exists()


async def test_a_new_channel_closes_the_previous_one_and_ends_its_commands(
    make_fake_driver: DriverFactory,
) -> None:
    driver = make_fake_driver()
    with anyio.fail_after(DEADLINE_S):
        vm_id = (await driver.create_project_vm(spec())).vm_id
        async with GuestClient(await driver.open_channel(vm_id)) as first:
            handle = await first.start_exec("sleep 300")
            async with GuestClient(await driver.open_channel(vm_id)) as second:
                with pytest.raises(GuestUnreachable):
                    async for _ in handle.events():
                        pass
                assert first.closed
                assert (await second.hello()).protocol_version >= 1


async def test_a_vm_sleeps_with_its_memory_and_start_resumes_it_from_the_snapshot(
    make_fake_driver: DriverFactory,
) -> None:
    driver = make_fake_driver()
    with anyio.fail_after(DEADLINE_S):
        vm_id = (await driver.create_project_vm(spec())).vm_id
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            await client.write_file("before-sleep.txt", b"zzz")
        await driver.suspend_project_vm(vm_id)

        assert await driver.get_vm_status(vm_id) == VMStatus.STOPPED
        [info] = await driver.list_vms()
        assert "asleep with a memory snapshot" in info.detail
        snapshot = driver.records.snapshot_dir(vm_id)
        for name in ("vm.state", "vm.mem"):
            assert stat.S_IMODE((snapshot / name).stat().st_mode) == 0o400
        assert driver.records.load(vm_id).snapshot is not None
        assert vmm_processes(f"pvm-{key_of(driver, vm_id)}") == []
        with pytest.raises(GuestUnreachable, match="asleep with its memory"):
            await driver.open_channel(vm_id)
        await driver.stop_project_vm(vm_id)  # stopping a sleeping VM keeps its memory
        assert snapshot.exists()

        await driver.start_project_vm(vm_id)
        [load] = [e for e in make_fake_driver.exchanges if e.path == "/snapshot/load"]
        assert load.status == 204
        assert load.body is not None
        assert load.body["resume_vm"] is True
        assert load.body["snapshot_path"] == str(snapshot / "vm.state")
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            assert (await client.read_file("before-sleep.txt")).data == b"zzz"
        assert snapshot.exists()  # still mapped by the VM it was restored into
        await driver.stop_project_vm(vm_id)
    assert not snapshot.exists()
    assert driver.records.load(vm_id).snapshot is None


async def test_a_resource_change_while_asleep_discards_the_snapshot_and_boots_afresh(
    make_fake_driver: DriverFactory,
) -> None:
    driver = make_fake_driver()
    wanted = spec()
    with anyio.fail_after(DEADLINE_S):
        vm_id = (await driver.create_project_vm(wanted)).vm_id
        await driver.suspend_project_vm(vm_id)
        await driver.start_project_vm(vm_id, wanted.model_copy(update={"memory_mb": 512}))
        assert await driver.get_vm_status(vm_id) == VMStatus.RUNNING
    assert "/snapshot/load" not in [e.path for e in make_fake_driver.exchanges]
    machine = [e for e in make_fake_driver.exchanges if e.path == "/machine-config"]
    assert machine[-1].body is not None
    assert machine[-1].body["mem_size_mib"] == 512
    assert not driver.records.snapshot_dir(vm_id).exists()


async def test_a_restarted_server_adopts_the_running_vm_and_can_stop_it(
    make_fake_driver: DriverFactory,
) -> None:
    first = make_fake_driver()
    with anyio.fail_after(DEADLINE_S):
        vm_id = (await first.create_project_vm(spec())).vm_id
        async with GuestClient(await first.open_channel(vm_id)) as client:
            await client.write_file("persist.bin", bytes(range(256)))
        await first.aclose()  # the server goes; its VMs keep running
        second = make_fake_driver()
        [info] = await second.list_vms()
        assert info.status == VMStatus.RUNNING
        assert await second.get_vm_status(vm_id) == VMStatus.RUNNING
        async with GuestClient(await second.open_channel(vm_id)) as client:
            assert (await client.read_file("persist.bin")).data == bytes(range(256))
        await second.stop_project_vm(vm_id)
        assert await second.get_vm_status(vm_id) == VMStatus.STOPPED
    assert vmm_processes(f"pvm-{key_of(second, vm_id)}") == []


async def test_a_vmm_that_dies_is_reported_stopped_cleaned_up_and_starts_again(
    make_fake_driver: DriverFactory,
) -> None:
    driver = make_fake_driver()
    with anyio.fail_after(DEADLINE_S):
        vm_id = (await driver.create_project_vm(spec())).vm_id
        running = driver._running[vm_id]
        running.machine.process.signal(signal.SIGKILL)
        await running.machine.process.wait()
        assert await driver.get_vm_status(vm_id) == VMStatus.STOPPED
        with pytest.raises(GuestUnreachable):
            await driver.open_channel(vm_id)
        runtime = driver.runtime_base / f"pvm-{key_of(driver, vm_id)}"
        assert not runtime.exists()  # stale sockets and pidfile went with it
        await driver.start_project_vm(vm_id)
        assert await driver.get_vm_status(vm_id) == VMStatus.RUNNING


async def test_the_probe_boots_a_test_vm_and_says_usable_when_the_guest_says_hello(
    make_fake_driver: DriverFactory,
) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing here: the probe stops before its boot")
    driver = make_fake_driver()
    with anyio.fail_after(DEADLINE_S):
        availability = await driver.probe()
    assert availability.usable, availability.reason
    assert availability.reason.startswith("Firecracker 1.12.1 boots guests here")
    assert availability.details["boot probe"].startswith("passed in")
    assert not (driver.root / "boot-probe").exists()
