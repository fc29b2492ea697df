#!/usr/bin/env python3
"""Measure the qemu driver here: boot to hello, command round trip, idle memory, suspend and
resume, stop. Usage: scripts/bench_qemu.py [IMAGES_DIR] (default: the test image cache)."""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from guest_runtime.client import GuestClient
from vm_drivers.base import DriverContext, VMSpec
from vm_drivers.qemu import QemuDriver
from vm_drivers.registry import DriverSet

IMAGES = Path(
    sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/projectvm-test-images/data/images/current"
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        drivers = DriverSet(
            DriverContext.for_data_dir(Path(scratch)), {"qemu": {"images": str(IMAGES)}}
        )
        driver = drivers.get("qemu")
        assert isinstance(driver, QemuDriver)
        print((await driver.probe()).details)
        boots, round_trips, suspends, resumes, stops, rss = [], [], [], [], [], []
        for _ in range(3):
            spec = VMSpec(
                project_id=f"prj_b{secrets.token_hex(4)}", name="bench", cpus=1, memory_mb=512
            )
            began = time.monotonic()
            vm_id = (await driver.create_project_vm(spec)).vm_id
            boots.append(time.monotonic() - began)
            try:
                async with GuestClient(await driver.open_channel(vm_id)) as client:
                    await client.hello()
                    for _ in range(20):
                        began = time.monotonic()
                        handle = await client.start_exec("true")
                        async for _event in handle.events():
                            pass
                        round_trips.append(time.monotonic() - began)
                pid = driver._pid(vm_id)
                assert pid is not None
                rss.append(rss_mib(pid))
                began = time.monotonic()
                await driver.suspend_project_vm(vm_id)
                suspends.append(time.monotonic() - began)
                began = time.monotonic()
                await driver.resume_project_vm(vm_id)
                resumes.append(time.monotonic() - began)
                began = time.monotonic()
                await driver.stop_project_vm(vm_id)
                stops.append(time.monotonic() - began)
            finally:
                await driver.destroy_project_vm(vm_id)
        await drivers.aclose()
    for name, values, unit in (
        ("create → hello (boot)", boots, "s"),
        ("exec `true` round trip", [v * 1000 for v in round_trips], "ms"),
        ("QEMU RSS after boot + 20 commands", rss, "MiB"),
        ("suspend (memory to file)", suspends, "s"),
        ("resume (file to hello)", resumes, "s"),
        ("stop (guest flush + exit)", stops, "s"),
    ):
        spread = f"min {min(values):.3f}, max {max(values):.3f}, n={len(values)}"
        print(f"{name}: p50 {statistics.median(values):.3f} {unit} ({spread})")


anyio.run(main)
