"""The driver against the real Firecracker v1.12.1 binary and a real Debian guest kernel.

Every configuration request must be accepted and kept (``GET /vm/config``), InstanceStart
issued, and — because this host's KVM cannot run a guest to userspace, and the test initramfs
has no agent anyway — the boot must end in a clear failure within the bounded time, with no
Firecracker process, socket, tap or jail left behind.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from vm_drivers.base import VMSpec
from vm_drivers.config import FirecrackerJailerConfig
from vm_drivers.errors import (
    DriverUnavailable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
)
from vm_drivers.firecracker.api import Drive, FirecrackerAPIError
from vm_drivers.firecracker.boot import BootRequest, RunningVM, release
from vm_drivers.firecracker.disks import DiskLock, create_data_disk
from vm_drivers.firecracker.driver import FirecrackerDriver
from vm_drivers.firecracker.machine import BootFailed
from vm_drivers.firecracker.network import egress_unavailable_reason
from vm_drivers.firecracker.process import ConsoleLog
from vm_drivers.firecracker.records import SnapshotRecord, runtime_key

from .conftest import TEST_BOOT_TIMEOUT_S, DriverFactory, vmm_processes

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

# Spawn, configure, the bounded wait for hello, kill and cleanup; generous for a loaded host.
DEADLINE_S = TEST_BOOT_TIMEOUT_S + 30
CONFIGURATION = [
    ("GET", "/version"),
    ("PUT", "/logger"),
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PUT", "/drives/data"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("GET", "/vm/config"),
    ("PUT", "/actions"),
]


def spec(**overrides: object) -> VMSpec:
    values: dict[str, object] = {
        "project_id": f"prj_fc{os.urandom(4).hex()}",
        "name": "firecracker test",
        "labels": {"projectvm.test": "1"},
    }
    values.update(overrides)
    return VMSpec.model_validate(values)


def assert_nothing_left(driver: FirecrackerDriver, vm_id: str) -> None:
    key = runtime_key(driver.context.instance_id, vm_id)
    assert vmm_processes(f"pvm-{key}") == []
    assert not (driver.runtime_base / f"pvm-{key}").exists()
    assert not Path(f"/sys/class/net/pvm{key}").exists()


async def test_a_vm_is_configured_as_firecracker_accepts_then_a_silent_guest_fails_clearly(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver()
    wanted = spec()
    vm_id = f"pvm-{wanted.project_id}"
    began = anyio.current_time()
    with anyio.fail_after(DEADLINE_S), pytest.raises(VMCreationFailed) as raised:
        await driver.create_project_vm(wanted)
    elapsed = anyio.current_time() - began
    assert elapsed < DEADLINE_S

    exchanges = make_driver.exchanges
    assert [(e.method, e.path) for e in exchanges] == CONFIGURATION
    assert [e.status for e in exchanges] == [200] + [204] * 7 + [200, 204]
    assert exchanges[-1].body == {"action_type": "InstanceStart"}
    kept = exchanges[-2].answer
    assert kept["machine-config"]["vcpu_count"] == 1
    assert kept["machine-config"]["mem_size_mib"] == 256
    assert "pvm.channel=vsock:52" in kept["boot-source"]["boot_args"]
    assert kept["boot-source"]["kernel_image_path"] == str(driver.images.kernel)
    drives = {drive["drive_id"]: drive for drive in kept["drives"]}
    assert drives["rootfs"]["is_read_only"] is True
    assert drives["data"]["is_read_only"] is False
    assert drives["data"]["cache_type"] == "Writeback"
    assert drives["data"]["path_on_host"].endswith(f"{vm_id}/data.ext4")
    assert kept["vsock"]["uds_path"].endswith("/v.sock")
    assert kept["network-interfaces"] == []  # no egress asked: no network at all

    message = str(raised.value)
    assert f"could not create VM {vm_id}" in message
    assert "did not say hello" in message or "Firecracker exited" in message
    assert "Guest console's last lines" in message
    assert "projectvm doctor" in message
    assert_nothing_left(driver, vm_id)
    assert await driver.list_vms() == []
    with pytest.raises(VMNotFound):
        await driver.get_vm_status(vm_id)


def _request(driver: FirecrackerDriver, tmp_path: Path, disk: Path) -> BootRequest:
    vm_id = f"pvm-prj_{os.urandom(3).hex()}"
    return BootRequest(
        vm_id=vm_id,
        key=runtime_key(driver.context.instance_id, vm_id),
        labels=driver.context.labels("prj", vm_id),
        vcpus=1,
        memory_mb=256,
        egress=False,
        disk=disk,
        console=ConsoleLog(tmp_path / "console.log", 64 * 1024),
    )


@pytest.fixture
async def disk(tmp_path: Path) -> Path:
    path = tmp_path / "data.ext4"
    with anyio.fail_after(60):
        await create_data_disk(path, 256 * 1024**2)
    return path


async def _started(driver: FirecrackerDriver, request: BootRequest) -> RunningVM:
    running = await driver.booter.start_vmm(request)
    try:
        await driver.booter.configure(request, running)
        await running.machine.start_instance()
    except BaseException:
        await release(running)
        raise
    return running


async def test_after_instance_start_the_vm_runs_with_the_configuration_it_was_given(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    driver = make_driver()
    request = _request(driver, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S):
        running = await _started(driver, request)
        try:
            info = await running.machine.api.describe()
            config = await running.machine.api.vm_config()
            with pytest.raises(VMOperationFailed, match="in use by another process"):
                DiskLock.acquire(disk)  # Firecracker takes no lock: the driver's holds
        finally:
            await release(running)
    assert info.state == "Running"
    assert info.id == f"pvm-{request.key}"
    assert config.machine_config == {
        "vcpu_count": 1,
        "mem_size_mib": 256,
        "smt": False,
        "track_dirty_pages": False,
        "huge_pages": "None",
    }
    assert config.boot_source is not None
    assert config.boot_source["initrd_path"] == str(driver.images.initramfs)
    assert vmm_processes(f"pvm-{request.key}") == []
    assert not running.launch.paths.root.exists()
    DiskLock.acquire(disk).release()


async def test_a_refusal_carries_firecrackers_fault_message_verbatim(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    driver = make_driver()
    request = _request(driver, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S):
        running = await driver.booter.start_vmm(request)
        try:
            with pytest.raises(FirecrackerAPIError) as raised:
                await running.machine.api.put(
                    "drive",
                    Drive(drive_id="extra", path_on_host="/nonexistent/disk", is_read_only=True),
                    drive_id="extra",
                )
        finally:
            await release(running)
    refusal = make_driver.exchanges[-1]
    assert refusal.status == 400
    assert raised.value.fault_message == refusal.answer["fault_message"]
    assert "No such file or directory" in raised.value.fault_message
    assert raised.value.fault_message in str(raised.value)
    assert str(raised.value).startswith("Firecracker refused PUT /drives/extra (HTTP 400)")


async def test_stopping_a_vm_whose_guest_does_not_answer_ends_in_ctrl_alt_del_then_a_kill(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    driver = make_driver()
    request = _request(driver, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S):
        running = await _started(driver, request)
        how = await driver.booter.stop(running)
    assert how == "the VMM was killed"
    assert ("PUT", "/actions", 204) in [(e.method, e.path, e.status) for e in make_driver.exchanges]
    assert make_driver.exchanges[-1].body == {"action_type": "SendCtrlAltDel"}
    assert vmm_processes(f"pvm-{request.key}") == []
    assert not running.launch.paths.root.exists()


async def test_a_paused_vm_is_snapshotted_and_a_fresh_vmm_loads_and_resumes_it(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    driver = make_driver()
    request = _request(driver, tmp_path, disk)
    directory = tmp_path / "snapshot"
    directory.mkdir()
    with anyio.fail_after(DEADLINE_S * 2):
        running = await _started(driver, request)
        try:
            snapshot = await driver.booter.snapshot(running, directory)
            paused = await running.machine.api.describe()
        finally:
            await release(running)
        memory = directory / "vm.mem"
        assert paused.state == "Paused"
        assert memory.stat().st_size == 256 * 1024**2
        assert stat.S_IMODE(memory.stat().st_mode) == 0o400
        assert snapshot.firecracker_version == "1.12.1"
        with pytest.raises(BootFailed):
            await driver.booter.resume(request, snapshot, directory)
    loads = [e for e in make_driver.exchanges if e.path == "/snapshot/load"]
    assert [e.status for e in loads] == [204]
    assert loads[0].body is not None
    assert loads[0].body["resume_vm"] is True
    assert loads[0].body["mem_backend"] == {"backend_type": "File", "backend_path": str(memory)}
    assert "vsock_override" not in loads[0].body  # 1.12 predates it; same path anyway
    assert vmm_processes(f"pvm-{request.key}") == []
    assert memory.exists()  # the snapshot stays until the caller drops it


async def test_a_snapshot_from_another_firecracker_version_is_refused_before_loading(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    driver = make_driver()
    request = _request(driver, tmp_path, disk)
    other = SnapshotRecord.model_validate(
        {"firecracker_version": "1.99.0", "created_at": "2026-01-01T00:00:00Z", "shape": {}}
    )
    with anyio.fail_after(DEADLINE_S), pytest.raises(VMOperationFailed, match=r"1\.99\.0"):
        await driver.booter.resume(request, other, tmp_path)
    assert "/snapshot/load" not in [e.path for e in make_driver.exchanges]
    assert vmm_processes(f"pvm-{request.key}") == []


async def test_a_restarted_server_adopts_the_running_vmm_from_its_pidfile(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    first = make_driver()
    request = _request(first, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S):
        running = await _started(first, request)
        await running.machine.close()  # the first server goes away; the VMM keeps running
        second = make_driver()
        adopted = second.booter.adopt(request.key, request.vm_id)
        assert adopted is not None
        try:
            assert adopted.machine.process.pid == running.machine.process.pid
            assert (await adopted.machine.api.describe()).state == "Running"
            assert second.booter.adopt(request.key, "pvm-someone-else") is None
        finally:
            await release(adopted)
    assert vmm_processes(f"pvm-{request.key}") == []


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory on the data's filesystem (jail socket paths must fit 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="pvmj", dir="/tmp") as directory:
        yield Path(directory)


async def test_under_the_jailer_the_vm_runs_chrooted_as_another_user_and_the_jail_goes_away(
    make_driver: DriverFactory, firecracker_bin: Path, tmp_path: Path, disk: Path, short_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the jailer needs root")
    version = 2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1
    jailer = FirecrackerJailerConfig(
        binary=str(firecracker_bin / "jailer"),
        chroot_base_dir=short_dir,
        uid=65534,
        gid=65534,
        cgroup_version=version,
    )
    driver = make_driver(jailer=jailer.model_dump())
    request = _request(driver, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S):
        running = await _started(driver, request)
        try:
            status = Path(f"/proc/{running.machine.process.pid}/status").read_text()
            # The VMM's / is the jail (pivoted): it holds the staged files, not the host's.
            seen_root = sorted(os.listdir(f"/proc/{running.machine.process.pid}/root"))
            config = await running.machine.api.vm_config()
            info = await running.machine.api.describe()
        finally:
            await release(running)
    assert info.state == "Running"
    assert "\t65534\t" in next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert {"vmlinux", "data.ext4", "v.sock", "run", "dev"} <= set(seen_root)
    assert "etc" not in seen_root
    assert config.boot_source is not None
    assert config.boot_source["kernel_image_path"] == "/vmlinux"  # chroot-relative
    assert config.vsock == {"guest_cid": 3, "uds_path": "/v.sock"}
    assert not (short_dir / "firecracker" / f"pvm-{request.key}").exists()
    assert vmm_processes(f"pvm-{request.key}") == []


async def test_under_the_jailer_a_snapshot_is_made_and_loaded_inside_the_jail(
    make_driver: DriverFactory, firecracker_bin: Path, tmp_path: Path, disk: Path, short_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the jailer needs root")
    jailer = FirecrackerJailerConfig(
        binary=str(firecracker_bin / "jailer"),
        chroot_base_dir=short_dir,
        cgroup_version=2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1,
    )
    driver = make_driver(jailer=jailer.model_dump())
    request = _request(driver, tmp_path, disk)
    directory = tmp_path / "snapshot"
    directory.mkdir()
    with anyio.fail_after(DEADLINE_S * 2):
        running = await _started(driver, request)
        try:
            snapshot = await driver.booter.snapshot(running, directory)
        finally:
            await release(running)
        with pytest.raises(BootFailed):
            await driver.booter.resume(request, snapshot, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["vm.mem", "vm.state"]
    [create] = [e for e in make_driver.exchanges if e.path == "/snapshot/create"]
    assert create.body == {
        "snapshot_type": "Full",
        "snapshot_path": "/vm.state",
        "mem_file_path": "/vm.mem",
    }
    [load] = [e for e in make_driver.exchanges if e.path == "/snapshot/load"]
    assert load.status == 204
    assert load.body is not None
    assert load.body["snapshot_path"] == "/vm.state"
    assert not (short_dir / "firecracker" / f"pvm-{request.key}").exists()
    assert vmm_processes(f"pvm-{request.key}") == []


async def test_a_project_with_egress_gets_a_tap_and_the_tap_goes_with_the_failed_boot(
    make_driver: DriverFactory,
) -> None:
    reason = egress_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no taps here: {reason}")
    driver = make_driver()
    wanted = spec(network="egress")
    vm_id = f"pvm-{wanted.project_id}"
    key = runtime_key(driver.context.instance_id, vm_id)
    with anyio.fail_after(DEADLINE_S), pytest.raises(VMCreationFailed):
        await driver.create_project_vm(wanted)
    [interface] = [e for e in make_driver.exchanges if e.path == "/network-interfaces/eth0"]
    assert interface.status == 204
    assert interface.body is not None
    assert interface.body["host_dev_name"] == f"pvm{key}"
    [boot] = [e for e in make_driver.exchanges if e.path == "/boot-source"]
    assert boot.body is not None
    assert " ip=172.30." in boot.body["boot_args"]
    assert_nothing_left(driver, vm_id)


FAKE_FIRECRACKER = """#!{python}
# fake-firecracker: answers GET /version with an old version, like Firecracker {version} would.
import http.server, socketserver, sys
socket_path = sys.argv[sys.argv.index("--api-sock") + 1]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{{"firecracker_version": "{version}"}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

socketserver.UnixStreamServer(socket_path, Handler).serve_forever()
"""


async def test_a_firecracker_older_than_1_8_is_refused_with_a_clear_message(
    make_driver: DriverFactory, tmp_path: Path, disk: Path
) -> None:
    fake = tmp_path / "fake-firecracker"
    fake.write_text(FAKE_FIRECRACKER.format(python=sys.executable, version="1.7.0"))
    fake.chmod(0o755)
    driver = make_driver(binary=str(fake))
    request = _request(driver, tmp_path, disk)
    with anyio.fail_after(DEADLINE_S), pytest.raises(DriverUnavailable) as raised:
        await driver.booter.start_vmm(request)
    assert "Firecracker 1.7.0 is too old" in str(raised.value)
    assert "releases" in str(raised.value)
    assert vmm_processes(str(fake)) == []
    assert not (driver.runtime_base / f"pvm-{request.key}").exists()


async def test_the_probe_names_the_version_and_the_failed_boot_and_caches_the_verdict(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver()
    with anyio.fail_after(DEADLINE_S):
        first = await driver.probe()
    began = anyio.current_time()
    with anyio.fail_after(5):
        again = await driver.probe()
    assert anyio.current_time() - began < 2
    assert first.details["version"] == "1.12.1"
    assert "kvm modules" in first.details
    assert first.details["boot probe"].startswith(("failed in", "passed in"))
    assert again.reason == first.reason
    assert (driver.root / "boot-probe.json").exists()
    if not first.usable:  # as on this kind of host: nested KVM, and an initramfs without agent
        assert first.reason.startswith("the boot probe failed: ")
        assert "use the qemu driver here" in first.reason
        assert "Guest console" not in first.reason  # the long report stays out of the reason
    assert await driver.list_vms() == []
    probe_key = runtime_key(driver.context.instance_id, "projectvm-boot-probe")
    assert vmm_processes(f"pvm-{probe_key}") == []
    assert not (driver.root / "boot-probe").exists()
