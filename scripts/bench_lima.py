#!/usr/bin/env python3
"""The lima driver through fake-limactl, side by side with a raw `limactl shell` and `local`.

    .venv/bin/python scripts/bench_lima.py [--runs 200] [--creates 5] [--json]

There is no Lima here, so this measures the driver's own work around limactl (the calls it
makes, the channel, the launcher) on the fake, whose instances are bubblewrap sandboxes. For
each of lima per-project, lima shared and local it times:

  (a) run_command `true` over the open channel   vs  raw `limactl shell NAME true` per command
  (b) create_project_vm -> first command
  (c) open_channel on a running VM (agent already copied)
  (d) stop + start

On a Mac, Lima's own costs come on top: ssh for (a)'s raw column, a VM boot for (b) and (d).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guest_runtime.client import GuestClient  # noqa: E402
from tests.fakes.lima import (  # noqa: E402
    SHARED_INSTANCE,
    fake_limactl,
    per_project_environment,
    shared_environment,
)
from vm_drivers.base import DriverContext, VMDriver, VMSpec  # noqa: E402
from vm_drivers.registry import DriverSet  # noqa: E402


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "mean_ms": statistics.fmean(samples) * 1000}


async def timed(runs: int, action: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - began)
    return samples


async def first_command(driver: VMDriver, number: int) -> tuple[float, str]:
    began = time.perf_counter()
    created = await driver.create_project_vm(VMSpec(project_id=f"prj_bench{number}", name="b"))
    async with GuestClient(await driver.open_channel(created.vm_id)) as client:
        handle = await client.start_exec("true")
        async for _ in handle.events():
            pass
    return time.perf_counter() - began, created.vm_id


async def measure(driver: VMDriver, runs: int, creates: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    create_samples, vm_ids = [], []
    for number in range(creates):
        elapsed, vm_id = await first_command(driver, number)
        create_samples.append(elapsed)
        vm_ids.append(vm_id)
    results["create_to_first_command"] = summary(create_samples)
    vm_id = vm_ids[0]
    results["open_channel"] = summary(await timed(10, lambda: _open_and_close(driver, vm_id)))
    async with GuestClient(await driver.open_channel(vm_id)) as client:

        async def run_true() -> None:
            handle = await client.start_exec("true")
            async for _ in handle.events():
                pass

        results["run_true_over_channel"] = summary(await timed(runs, run_true))

    async def cycle() -> None:
        await driver.stop_project_vm(vm_id)
        await driver.start_project_vm(vm_id)

    results["stop_start"] = summary(await timed(max(3, creates), cycle))
    for created in vm_ids:
        await driver.destroy_project_vm(created)
    return results


async def _open_and_close(driver: VMDriver, vm_id: str) -> None:
    async with GuestClient(await driver.open_channel(vm_id)) as client:
        await client.hello()


async def bench_lima(mode: str, runs: int, creates: int, data: Path) -> dict[str, Any]:
    environment = shared_environment() if mode == "shared" else per_project_environment()
    async with environment as options:
        drivers = DriverSet(DriverContext.for_data_dir(data / mode), options={"lima": options})
        try:
            driver = drivers.get("lima")
            results = await measure(driver, runs, creates)
            home = Path(options["lima_home"])
            if mode == "shared":
                name = SHARED_INSTANCE
            else:
                made = await driver.create_project_vm(VMSpec(project_id="prj_raw", name="r"))
                name = driver.records.load(made.vm_id).instance  # type: ignore[attr-defined]
            results["raw_limactl_shell_true"] = summary(
                await timed(min(runs, 50), lambda: fake_limactl(home, "shell", name, "true"))
            )
        finally:
            await drivers.aclose()
    return results


async def bench_local(runs: int, creates: int, data: Path) -> dict[str, Any]:
    drivers = DriverSet(DriverContext.for_data_dir(data / "local"))
    try:
        return await measure(drivers.get("local"), runs, creates)
    finally:
        await drivers.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--creates", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pvm-bench-") as directory:
        data = Path(directory)
        report = {
            "lima": await bench_lima("per-project", args.runs, args.creates, data),
            "lima-shared": await bench_lima("shared", args.runs, args.creates, data),
            "local": await bench_local(args.runs, args.creates, data),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for driver, results in report.items():
        print(driver)
        for name, figures in results.items():
            print(f"  {name:26} p50 {figures['p50_ms']:8.1f} ms   p95 {figures['p95_ms']:8.1f} ms")


if __name__ == "__main__":
    anyio.run(main)
