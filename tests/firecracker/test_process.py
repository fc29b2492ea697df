"""The VMM's surroundings, with real processes and files: sockets, console log, pidfile, disks."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from vm_drivers.errors import DriverConfigError, VMCreationFailed, VMOperationFailed
from vm_drivers.firecracker.disks import DiskLock, create_data_disk
from vm_drivers.firecracker.process import (
    ConsoleLog,
    RuntimePaths,
    VMMPidfile,
    adopt,
    spawn,
    start_ticks,
    wait_for_api_socket,
)

pytestmark = pytest.mark.anyio

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_socket_paths_over_the_unix_limit_are_refused_before_anything_starts() -> None:
    short = RuntimePaths(Path("/run/projectvm-fc/pvm-0123456789"))
    short.check_lengths([52])
    long = RuntimePaths(Path("/tmp") / ("d" * 100))
    with pytest.raises(DriverConfigError, match="107-byte limit") as raised:
        long.check_lengths([52])
    assert "runtime_dir" in str(raised.value)


def test_stale_sockets_are_unlinked_and_other_files_kept(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path / "vm")
    paths.root.mkdir()
    stale = ["api.sock", "v.sock", "v.sock_52", "v.sock_1024"]
    for name in [*stale, "firecracker.log"]:
        (paths.root / name).write_bytes(b"")
    paths.prepare()
    assert sorted(p.name for p in paths.root.iterdir()) == ["firecracker.log"]


def test_a_jailed_vmm_sees_paths_relative_to_its_chroot(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path / "jail" / "root", chroot=True)
    assert paths.api_socket == paths.root / "run" / "firecracker.socket"
    assert paths.api_view(paths.vsock_socket) == "/v.sock"
    assert RuntimePaths(tmp_path).api_view(tmp_path / "v.sock") == str(tmp_path / "v.sock")


async def test_the_console_log_is_capped_rotated_and_keeps_the_newest_output(
    tmp_path: Path,
) -> None:
    console = ConsoleLog(tmp_path / "console.log", cap_bytes=8192)
    console.start_fresh()
    read_fd, write_fd = os.pipe()
    console.follow(read_fd)
    lines = b"".join(b"line %05d of a chatty guest\n" % number for number in range(4000))

    def write_all() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(lines)

    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(write_all)
        assert await anyio.to_thread.run_sync(console.join, 5.0)
    kept = console.path.stat().st_size + console.rotated.stat().st_size
    assert 0 < kept <= 8192
    assert console.tail(1) == "line 03999 of a chatty guest"


async def test_a_pidfile_finds_its_process_but_never_a_recycled_pid(tmp_path: Path) -> None:
    console = ConsoleLog(tmp_path / "console.log", 4096)
    console.start_fresh()
    process = await spawn(SLEEPER, console=console)
    pidfile = tmp_path / "vmm.json"
    record = VMMPidfile(
        pid=process.pid,
        start_ticks=start_ticks(process.pid) or 0,
        vm_id="pvm-prj_x",
        key="0123456789",
        labels={"projectvm.project": "prj_x"},
        started_at=datetime.now(UTC),
    )
    record.write(pidfile)
    try:
        found = adopt(pidfile)
        assert found is not None
        adopted, read = found
        assert adopted.pid == process.pid
        assert adopted.running()
        assert read.labels == {"projectvm.project": "prj_x"}
        adopted.close()
        record.model_copy(update={"start_ticks": record.start_ticks + 1}).write(pidfile)
        assert adopt(pidfile) is None  # same pid, another process
    finally:
        with anyio.fail_after(10):
            await process.kill()
    assert not process.running()
    assert process.exit_code == -signal.SIGKILL
    record.write(pidfile)
    assert adopt(pidfile) is None


async def test_a_vmm_that_exits_before_its_api_socket_appears_reports_status_and_output(
    tmp_path: Path,
) -> None:
    console = ConsoleLog(tmp_path / "console.log", 4096)
    console.start_fresh()
    process = await spawn(
        [sys.executable, "-c", "import sys; sys.stderr.write('boom: no kvm\\n'); sys.exit(3)"],
        console=console,
    )
    with anyio.fail_after(10), pytest.raises(VMOperationFailed) as raised:
        await wait_for_api_socket(process, tmp_path / "api.sock", console, timeout_s=8)
    assert "status 3" in str(raised.value)
    assert "boom: no kvm" in str(raised.value)


async def test_an_api_socket_that_never_appears_fails_within_the_timeout(tmp_path: Path) -> None:
    console = ConsoleLog(tmp_path / "console.log", 4096)
    console.start_fresh()
    process = await spawn(SLEEPER, console=console)
    try:
        with anyio.fail_after(10), pytest.raises(VMOperationFailed, match="did not appear"):
            await wait_for_api_socket(process, tmp_path / "api.sock", console, timeout_s=0.3)
    finally:
        await process.kill()


@pytest.fixture
def requires_mkfs() -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")


async def test_a_data_disk_is_a_sparse_ext4_labelled_pvm_data(
    tmp_path: Path, requires_mkfs: None
) -> None:
    disk = tmp_path / "vm" / "data.ext4"
    with anyio.fail_after(60):
        await create_data_disk(disk, 2 * 1024**3)
        label = await anyio.run_process(["blkid", "-s", "LABEL", "-o", "value", str(disk)])
    assert label.stdout.decode().strip() == "pvm-data"
    assert disk.stat().st_size == 2 * 1024**3
    assert disk.stat().st_blocks * 512 < 32 * 1024**2  # sparse, lazily initialised
    with pytest.raises(VMCreationFailed, match="already exists"):
        await create_data_disk(disk, 1024**3)
    assert [p.name for p in disk.parent.iterdir()] == ["data.ext4"]


async def test_the_disk_lock_is_exclusive_and_lasts_as_long_as_the_process_holding_it(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "data.ext4"
    disk.write_bytes(b"\0" * 4096)
    lock = DiskLock.acquire(disk)
    with pytest.raises(VMOperationFailed, match="in use by another process"):
        DiskLock.acquire(disk)
    console = ConsoleLog(tmp_path / "console.log", 4096)
    console.start_fresh()
    holder = await spawn(SLEEPER, console=console, pass_fds=(lock.fd,))
    lock.release()
    try:
        assert DiskLock.held(disk)  # the child's inherited descriptor keeps it
    finally:
        with anyio.fail_after(10):
            await holder.kill()
    assert not DiskLock.held(disk)
    DiskLock.acquire(disk).release()
