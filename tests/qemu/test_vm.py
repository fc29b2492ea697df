"""The qemu driver with real VMs: persistence, limits, sleep with memory, boot failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from guest_runtime.client import GuestClient
from tests.conformance.running import LIST_PROCESSES, run
from vm_drivers.base import VMStatus
from vm_drivers.errors import VMCreationFailed, VMOperationFailed
from vm_drivers.qemu import QemuDriver
from vm_drivers.qemu.process import kill, process_alive, wait_exit

from .conftest import make_driver, vm_spec

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]


def qemu_pids(vm_id: str) -> list[int]:
    """Live QEMU processes running ``vm_id`` (found through /proc, not the driver)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = bool(argv) and argv[0].endswith(b"qemu-system-x86_64")
        if is_qemu and vm_id.encode() in argv and process_alive(int(entry)):
            found.append(int(entry))
    return found


async def test_a_file_written_before_stop_survives_start_and_a_fresh_driver(
    driver: QemuDriver, shared_vm: str, data_dir: Path, qemu_options: dict[str, Any]
) -> None:
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        # Written by a command without fsync: only a clean guest shutdown keeps it.
        await run(client, "printf 'kept across stop\\n' > unsynced.txt")
    await driver.stop_project_vm(shared_vm)
    assert qemu_pids(shared_vm) == []
    await driver.start_project_vm(shared_vm)
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        assert (await client.read_file("unsynced.txt")).data == b"kept across stop\n"
    drivers, fresh = make_driver(data_dir, **qemu_options)
    try:
        assert await fresh.get_vm_status(shared_vm) == VMStatus.RUNNING
        async with GuestClient(await fresh.open_channel(shared_vm)) as client:
            assert (await client.read_file("unsynced.txt")).data == b"kept across stop\n"
    finally:
        await drivers.aclose()


async def test_a_timeout_kills_every_process_the_command_started(guest: GuestClient) -> None:
    command = "sh -c 'sleep 171 & sh -c \"sleep 172 & sleep 173\" & sleep 174'"
    exit_info, _, _, _ = await run(guest, command, timeout_s=2)
    assert exit_info.timed_out
    _, listing, _, _ = await run(guest, LIST_PROCESSES)
    assert not any(f"sleep 17{n}".encode() in listing for n in range(1, 5))


async def test_writing_past_the_disk_size_fails_with_no_space_and_the_agent_stays_healthy(
    guest: GuestClient,
) -> None:
    exit_info, _, err, _ = await run(
        guest, "dd if=/dev/zero of=filler bs=1M count=200 conv=fsync", deadline=180
    )
    assert exit_info.exit_code != 0
    assert b"No space left on device" in err
    stats = await guest.stats()
    assert stats.disk_free_bytes is not None
    assert stats.disk_free_bytes < 5 * 2**20
    await guest.remove("filler")
    written = await guest.write_file("after.txt", b"room again")
    assert written.size == len(b"room again")


async def test_a_background_process_keeps_running_across_suspend_and_resume(
    driver: QemuDriver, shared_vm: str
) -> None:
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        await run(
            client,
            "rm -f tick; nohup sh -c 'while :; do date +%s%N >> tick; sleep 0.2; done' "
            ">/dev/null 2>&1 &",
        )
        # Blocks until the first tick is written (no polling from here).
        first, _, _, _ = await run(
            client, "tail -F -n +1 tick 2>/dev/null | head -n 1", timeout_s=30
        )
        assert first.exit_code == 0
    await driver.suspend_project_vm(shared_vm)
    assert driver.suspend_file(shared_vm).stat().st_size > 0
    assert qemu_pids(shared_vm) == []
    assert await driver.get_vm_status(shared_vm) == VMStatus.STOPPED
    await driver.resume_project_vm(shared_vm)
    assert not driver.suspend_file(shared_vm).exists()
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        # Three new ticks after the wake-up: the loop started before the sleep still runs.
        ticks, out, _, _ = await run(client, "tail -n 0 -F tick | head -n 3", timeout_s=30)
        assert ticks.exit_code == 0
        assert len(out.splitlines()) == 3
        await client.write_file("after-resume.txt", b"landed")
        assert (await client.read_file("after-resume.txt")).data == b"landed"
        await run(client, "pkill -f 'date +%s%N' || kill $(pgrep -f tick) 2>/dev/null; true")


async def test_a_second_start_while_one_runs_leaves_a_single_qemu(
    driver: QemuDriver, shared_vm: str, data_dir: Path, qemu_options: dict[str, Any]
) -> None:
    await driver.stop_project_vm(shared_vm)
    drivers, other = make_driver(data_dir, **qemu_options)
    outcomes: list[str] = []

    async def start(which: QemuDriver) -> None:
        try:
            await which.start_project_vm(shared_vm)
            outcomes.append("started")
        except VMOperationFailed as err:
            outcomes.append("refused" if "another ProjectVM process" in str(err) else str(err))

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(start, driver)
                group.start_soon(start, other)
        assert sorted(outcomes) in (["refused", "started"], ["started", "started"])
        assert len(qemu_pids(shared_vm)) == 1
        await other.start_project_vm(shared_vm)  # running already: adopted, not started again
        assert len(qemu_pids(shared_vm)) == 1
    finally:
        await drivers.aclose()


async def test_a_vm_whose_qemu_died_reports_stopped_and_starts_again(
    driver: QemuDriver, shared_vm: str
) -> None:
    [pid] = qemu_pids(shared_vm)
    kill(pid)
    assert await wait_exit(pid, 10)
    assert await driver.get_vm_status(shared_vm) == VMStatus.STOPPED
    await driver.start_project_vm(shared_vm)
    assert await driver.get_vm_status(shared_vm) == VMStatus.RUNNING


async def test_a_guest_that_never_says_hello_fails_in_bounded_time_leaving_nothing(
    data_dir: Path, qemu_options: dict[str, Any]
) -> None:
    drivers, broken = make_driver(
        data_dir, **qemu_options, extra_kernel_args="rdinit=/no-such-init", boot_timeout_s=30
    )
    spec = vm_spec()
    vm_id = f"pvm-{spec.project_id}"
    try:
        with anyio.fail_after(60), pytest.raises(VMCreationFailed) as failure:
            await broken.create_project_vm(spec)
    finally:
        await drivers.aclose()
    message = str(failure.value)
    assert "did not come up" in message
    assert "Kernel panic" in message  # the console's tail tells why
    assert qemu_pids(vm_id) == []
    assert not broken.runtime_dir(vm_id).exists()
    assert not broken.vm_dir(vm_id).exists()


async def test_a_boot_slower_than_the_deadline_is_cut_off_with_the_console_tail(
    data_dir: Path, qemu_options: dict[str, Any]
) -> None:
    drivers, hasty = make_driver(data_dir, **qemu_options, boot_timeout_s=1.5)
    spec = vm_spec()
    vm_id = f"pvm-{spec.project_id}"
    try:
        with anyio.fail_after(30), pytest.raises(VMCreationFailed) as failure:
            await hasty.create_project_vm(spec)
    finally:
        await drivers.aclose()
    assert "did not answer on" in str(failure.value)
    assert "within 1.5s" in str(failure.value)
    assert "Last console lines" in str(failure.value)
    assert qemu_pids(vm_id) == []
    assert not hasty.runtime_dir(vm_id).exists()


async def test_probe_names_the_accelerator_and_why(driver: QemuDriver) -> None:
    availability = await driver.probe()
    assert availability.usable
    assert availability.details["accel"] in ("kvm", "tcg")
    assert availability.details["accel_reason"]


async def test_only_an_egress_vm_has_a_network_interface(
    driver: QemuDriver, shared_vm: str
) -> None:
    async with GuestClient(await driver.open_channel(shared_vm)) as client:
        _, interfaces, _, _ = await run(client, "ls /sys/class/net")
    assert interfaces.split() == [b"lo"]
    created = await driver.create_project_vm(vm_spec(network="egress"))
    try:
        async with GuestClient(await driver.open_channel(created.vm_id)) as client:
            _, out, _, _ = await run(
                client, "cat /sys/class/net/eth0/operstate; cat /proc/net/fib_trie"
            )
        assert out.startswith(b"up\n")
        assert b"10.0.2.15" in out  # QEMU user networking's guest address
    finally:
        await driver.destroy_project_vm(created.vm_id)
