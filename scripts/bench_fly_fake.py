#!/usr/bin/env python3
"""The fly driver's own overhead, measured against FakeFlyMachinesAPI, side by side, in one run.

    .venv/bin/python scripts/bench_fly_fake.py [--runs 200] [--creates 5]

Times, with the same guest agent zipapp on this host:

  (a) exec `true` through the fly channel (WebSocket via the fake Fly Proxy) vs the agent over
      stdio pipes: the cost of the HTTP face, the WebSocket framing and one proxy hop;
  (b) create_project_vm -> first command, suspend, resume, stop, start (API calls, leases,
      waits and agent boots against the fake; Fly's own boot times are not in it).

Needs bubblewrap (the fake's Machines run in it). No network, no Fly account.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.streams.stapled import StapledByteStream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guest_runtime.bundle import write_agent_zipapp  # noqa: E402
from guest_runtime.client import GuestClient  # noqa: E402
from tests.fakes.fake_fly import FakeFlyMachinesAPI  # noqa: E402
from vm_drivers.base import DriverContext, VMSpec  # noqa: E402
from vm_drivers.config import FlyDriverConfig  # noqa: E402
from vm_drivers.fly.driver import FlyDriver  # noqa: E402


async def exec_true(client: GuestClient) -> None:
    handle = await client.start_exec(["true"])
    async for _ in handle.events():
        pass


async def timed(action: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):7.2f} ms  p95 {p95:7.2f} ms  (n={len(ordered)})"


async def main(runs: int, creates: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        async with FakeFlyMachinesAPI(root / "fake") as fake:
            options = fake.driver_options("http://fake-fly.invalid")
            config = FlyDriverConfig.model_validate(options)
            driver = FlyDriver(
                config, DriverContext.for_data_dir(root / "data"), transport=fake.transport()
            )
            lifecycle: dict[str, list[float]] = {
                k: [] for k in ("create+first", "suspend", "resume", "stop", "start")
            }
            for number in range(creates):
                spec = VMSpec(project_id=f"prj_bench{number}", name="bench")
                started = time.perf_counter()
                vm = (await driver.create_project_vm(spec)).vm_id
                async with GuestClient(await driver.open_channel(vm)) as client:
                    await client.hello()
                    await exec_true(client)
                lifecycle["create+first"].append((time.perf_counter() - started) * 1000)
                for name, step in (
                    ("suspend", driver.suspend_project_vm),
                    ("resume", driver.resume_project_vm),
                    ("stop", driver.stop_project_vm),
                    ("start", driver.start_project_vm),
                ):
                    started = time.perf_counter()
                    await step(vm)
                    lifecycle[name].append((time.perf_counter() - started) * 1000)
            vm = f"pvm-prj_bench{creates - 1}"
            async with GuestClient(await driver.open_channel(vm)) as client:
                await client.hello()
                await timed(lambda: exec_true(client), 20)
                fly = await timed(lambda: exec_true(client), runs)
            for number in range(creates):
                await driver.destroy_project_vm(f"pvm-prj_bench{number}")
            await driver.aclose()
            fake.assert_clean()
            requests = fake.validated

        workspace = root / "stdio-workspace"
        workspace.mkdir()
        zipapp = write_agent_zipapp(root / "agent")
        process = await anyio.open_process(
            [sys.executable, str(zipapp), "--root", str(workspace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        async with GuestClient(StapledByteStream(process.stdin, process.stdout)) as client:
            await client.hello()
            await timed(lambda: exec_true(client), 20)
            stdio = await timed(lambda: exec_true(client), runs)
        await process.wait()

    print(f"exec true, fly channel (WebSocket + fake proxy): {summary(fly)}")
    print(f"exec true, same agent over stdio pipes:          {summary(stdio)}")
    print(f"ratio fly/stdio (p50): {statistics.median(fly) / statistics.median(stdio):.2f}")
    for name, samples in lifecycle.items():
        print(f"{name:>13} against the fake: {summary(samples)}")
    print(f"API requests, all validated against the spec: {requests}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--creates", type=int, default=5)
    arguments = parser.parse_args()
    anyio.run(main, arguments.runs, arguments.creates)
