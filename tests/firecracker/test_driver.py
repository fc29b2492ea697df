"""The firecracker driver's own logic, without booting: configuration, records, strays, probe."""

from __future__ import annotations

import ipaddress
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from vm_drivers.base import LABEL_INSTANCE, LABEL_PROJECT, DriverContext, VMSpec, VMStatus
from vm_drivers.config import FirecrackerDriverConfig, parse_driver_config
from vm_drivers.errors import DriverConfigError, DriverUnavailable, GuestUnreachable, VMNotFound
from vm_drivers.firecracker.driver import FirecrackerDriver
from vm_drivers.firecracker.machine import MachineSettings, boot_args, config_mismatches
from vm_drivers.firecracker.network import plan_tap
from vm_drivers.firecracker.process import ConsoleLog, VMMPidfile, spawn, start_ticks
from vm_drivers.firecracker.records import VMRecord, runtime_key

from .conftest import vmm_processes

pytestmark = pytest.mark.anyio


def _fake_firecracker(directory: Path, version: str) -> Path:
    """``fake-firecracker``: only answers ``--version``, as Firecracker ``version`` would."""
    fake = directory / "fake-firecracker"
    fake.write_text(f"#!{sys.executable}\nprint('Firecracker v{version}')\nprint()\n")
    fake.chmod(0o755)
    return fake


def _driver(data_dir: Path, tmp_path: Path, **options: object) -> FirecrackerDriver:
    config = FirecrackerDriverConfig.model_validate(
        {"runtime_dir": str(tmp_path / "run"), **options}
    )
    return FirecrackerDriver(config, DriverContext.for_data_dir(data_dir))


def test_the_config_is_in_the_driver_union_and_refuses_an_odd_vcpu_count() -> None:
    assert parse_driver_config({"type": "firecracker"}).type == "firecracker"
    with pytest.raises(ValidationError, match="even number"):
        FirecrackerDriverConfig(vcpus=3)


def test_a_tap_is_named_within_ifnamsiz_with_a_30_of_the_egress_subnet() -> None:
    plan = plan_tap("0123456789", "172.30.0.0/16")
    assert plan.name == "pvm0123456789"
    assert len(plan.name) <= 15
    assert plan.host.network.prefixlen == 30
    assert plan.guest in plan.host.network
    assert plan.host.ip in ipaddress.IPv4Network("172.30.0.0/16")
    assert plan.guest_mac == "06:00:" + ":".join(f"{b:02x}" for b in plan.guest.packed)
    assert plan.boot_arg() == f"ip={plan.guest}::{plan.host.ip}:255.255.255.252::eth0:off"
    assert plan_tap("ffffffffff", "172.30.0.0/16") != plan
    with pytest.raises(DriverConfigError, match="too small"):
        plan_tap("0123456789", "10.0.0.0/31")


def test_the_kernel_command_line_names_the_channel_and_is_complete() -> None:
    settings = MachineSettings(
        vcpus=1,
        memory_mb=128,
        kernel="k",
        initramfs="i",
        rootfs="r",
        data_disk="d",
        vsock_socket="v",
        log_path="l",
        agent_port=1024,
        extra_boot_args="  quiet ",
    )
    args = boot_args(settings).split()
    assert args[:3] == ["console=ttyS0", "reboot=k", "panic=1"]
    assert "pvm.channel=vsock:1024" in args
    assert "pvm.vmm=firecracker" in args
    assert args[-1] == "quiet"
    assert not [arg for arg in args if arg.startswith("ip=")]


def test_config_read_back_mismatches_are_found_and_extra_keys_ignored() -> None:
    sent = {"drives": [{"drive_id": "data", "is_read_only": False}], "vsock": {"guest_cid": 3}}
    kept = {
        "drives": [{"drive_id": "data", "is_read_only": False, "rate_limiter": None}],
        "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
        "balloon": None,
    }
    assert config_mismatches(sent, kept) == []
    kept["drives"][0]["is_read_only"] = True
    assert config_mismatches(sent, kept) == [
        "/drives/0/is_read_only: sent False, Firecracker reports True"
    ]
    assert config_mismatches(sent, {**kept, "drives": []}) == [
        "/drives: sent 1 entries, Firecracker reports []"
    ]


async def test_without_a_binary_create_and_probe_say_how_to_install_firecracker(
    data_dir: Path, tmp_path: Path
) -> None:
    driver = _driver(data_dir, tmp_path, binary="no-such-firecracker")
    availability = await driver.probe()
    assert not availability.usable
    assert "'no-such-firecracker' was not found on PATH" in availability.reason
    assert "github.com/firecracker-microvm/firecracker/releases" in availability.reason
    with pytest.raises(DriverUnavailable, match="releases"):
        await driver.create_project_vm(VMSpec(project_id="prj_a", name="a"))
    assert await driver.list_vms() == []


async def test_the_probe_refuses_a_firecracker_older_than_1_8(
    data_dir: Path, tmp_path: Path
) -> None:
    driver = _driver(data_dir, tmp_path, binary=str(_fake_firecracker(tmp_path, "1.7.0")))
    availability = await driver.probe()
    assert not availability.usable
    assert availability.details["version"] == "1.7.0"
    assert "1.7.0 is too old: the driver needs 1.8 or later" in availability.reason


async def test_the_probe_names_missing_boot_images_before_trying_a_boot(
    data_dir: Path, tmp_path: Path
) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm here: the probe stops at that check first")
    driver = _driver(data_dir, tmp_path, binary=str(_fake_firecracker(tmp_path, "1.12.1")))
    availability = await driver.probe()
    assert not availability.usable
    assert f"kernel {data_dir / 'images' / 'current' / 'vmlinux'}" in availability.reason
    assert "build the VM images" in availability.reason
    assert not (driver.root / "boot-probe.json").exists()
    with pytest.raises(DriverUnavailable, match="boot images are missing"):
        await driver.create_project_vm(VMSpec(project_id="prj_b", name="b"))


def _record(driver: FirecrackerDriver, state: str = "stopped") -> VMRecord:
    spec = VMSpec(project_id="prj_rec", name="rec", labels={"team": "a"})
    vm_id = f"pvm-{spec.project_id}"
    record = VMRecord(
        vm_id=vm_id,
        project_id=spec.project_id,
        name=spec.name,
        key=runtime_key(driver.context.instance_id, vm_id),
        state=state,  # type: ignore[arg-type]
        spec=spec,
        created_at=datetime.now(UTC),
        labels={**spec.labels, **driver.context.labels(spec.project_id, vm_id)},
        disk_bytes=1024,
    )
    driver.records.save(record)
    driver.records.disk_path(vm_id).write_bytes(b"")
    return record


async def test_a_stopped_vm_is_listed_with_its_labels_refuses_channels_and_is_destroyed(
    data_dir: Path, tmp_path: Path
) -> None:
    driver = _driver(data_dir, tmp_path, binary="no-such-firecracker")
    record = _record(driver)
    [info] = await driver.list_vms()
    assert info.vm_id == record.vm_id
    assert info.status == VMStatus.STOPPED
    assert info.labels[LABEL_PROJECT] == "prj_rec"
    assert info.labels["team"] == "a"
    assert await driver.get_vm_status(record.vm_id) == VMStatus.STOPPED
    assert await driver.get_vm_url(record.vm_id) is None
    with pytest.raises(GuestUnreachable, match="is stopped; start it first"):
        await driver.open_channel(record.vm_id)
    await driver.destroy_project_vm(record.vm_id)
    await driver.destroy_project_vm(record.vm_id)  # destroying twice is not an error
    assert await driver.list_vms() == []
    assert not driver.records.vm_dir(record.vm_id).exists()
    with pytest.raises(VMNotFound):
        await driver.get_vm_status(record.vm_id)
    with pytest.raises(VMNotFound):
        await driver.start_project_vm(record.vm_id)


async def test_a_vm_recorded_as_running_whose_vmm_is_gone_is_reported_stopped(
    data_dir: Path, tmp_path: Path
) -> None:
    driver = _driver(data_dir, tmp_path, binary="no-such-firecracker")
    record = _record(driver, state="running")
    assert await driver.get_vm_status(record.vm_id) == VMStatus.STOPPED
    assert driver.records.load(record.vm_id).state == "stopped"


async def test_a_vmm_whose_record_is_gone_is_listed_as_a_stray_and_destroy_ends_it(
    data_dir: Path, tmp_path: Path
) -> None:
    driver = _driver(data_dir, tmp_path, binary="no-such-firecracker")
    vm_id = "pvm-prj_stray"
    key = runtime_key(driver.context.instance_id, vm_id)
    runtime = driver.runtime_base / f"pvm-{key}"
    runtime.mkdir(parents=True)
    (runtime / "api.sock").write_bytes(b"")
    console = ConsoleLog(tmp_path / "console.log", 4096)
    console.start_fresh()
    # Stands in for a Firecracker left by a server that crashed mid-create.
    stray = await spawn(
        [sys.executable, "-c", f"import time; time.sleep(60)  # pvm-{key}"], console=console
    )
    try:
        VMMPidfile(
            pid=stray.pid,
            start_ticks=start_ticks(stray.pid) or 0,
            vm_id=vm_id,
            key=key,
            labels=driver.context.labels("prj_stray", vm_id),
            started_at=datetime.now(UTC),
        ).write(runtime / "vmm.json")
        [info] = await driver.list_vms()
        assert info.vm_id == vm_id
        assert info.status == VMStatus.RUNNING
        assert info.labels[LABEL_INSTANCE] == driver.context.instance_id
        assert "without a VM record" in info.detail
        with anyio.fail_after(10):
            await driver.destroy_project_vm(vm_id)
        assert not stray.running()
        assert not runtime.exists()
        assert vmm_processes(f"pvm-{key}") == []
        assert await driver.list_vms() == []
    finally:
        await stray.kill()


async def test_another_installations_vmms_are_not_listed(data_dir: Path, tmp_path: Path) -> None:
    driver = _driver(data_dir, tmp_path, binary="no-such-firecracker")
    runtime = driver.runtime_base / "pvm-0000000000"
    runtime.mkdir(parents=True)
    VMMPidfile(
        pid=1,
        start_ticks=start_ticks(1) or 0,
        vm_id="pvm-prj_other",
        key="0000000000",
        labels={LABEL_INSTANCE: "someone-else"},
        started_at=datetime.now(UTC),
    ).write(runtime / "vmm.json")
    assert await driver.list_vms() == []
