#!/usr/bin/env python3
"""Every usable driver, measured through ProjectVM and straight through the driver, in one run.

    .venv/bin/python scripts/bench_drivers.py [--drivers local,docker,qemu] [--runs 50]
        [--creates 3] [--images DIR] [--json] [--chart docs/images/bench-drivers.svg]

For each driver it times, through a real MCP client talking to an in-memory server:
create_project -> first command, run_command `true` (p50/p95), a 4 KiB write_file and
read_file (p50), a cold start (stop_project, then start -> first command), a wake from a memory
snapshot (auto-sleep with memory, then the next command; drivers that suspend), and the host
memory one idle VM costs (PSS of the processes that make it). Beside each figure it measures the
raw baseline of the same backend in the same run: the driver and the guest agent without the
server (create -> the agent's hello -> `true`, an exec round trip, a 4 KiB file write/read over
the channel, stop/start to hello, suspend/resume to hello, the idle VM's memory).

It prints a table (ours, raw, ours/raw) and the seed's targets (VM creation < 30 s, command
latency < 2 s, file operations < 1 s), and writes the table as an SVG bar chart.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp import Client  # noqa: E402

from guest_runtime.client import GuestClient  # noqa: E402
from server.domain.config import ServerConfig  # noqa: E402
from server.surfaces.mcp.server import build_server  # noqa: E402
from vm_drivers.base import DriverContext, SupportsSuspend, VMSpec  # noqa: E402
from vm_drivers.registry import DriverSet  # noqa: E402

PAYLOAD = "x" * 4096
TEST_IMAGES = Path("/var/tmp/projectvm-test-images/data/images/current")
# The seed's targets, in seconds, for the metrics they apply to.
TARGETS = {"create": 30.0, "command_p50": 2.0, "command_p95": 2.0, "write": 1.0, "read": 1.0}
LABELS = {
    "create": "create → first command",
    "command_p50": "run_command p50",
    "command_p95": "run_command p95",
    "write": "write 4 KiB p50",
    "read": "read 4 KiB p50",
    "cold_start": "cold start → first command",
    "wake": "wake from memory → command",
    "memory_mib": "host memory per idle VM (MiB)",
}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


@dataclass
class Figures:
    ours: dict[str, float] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- host memory of one VM --------------------------------------------------------------------


def _pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def vm_memory_mib(tokens: list[str]) -> float:
    """PSS of every host process whose command line or cgroup names one of ``tokens`` (the VM's
    id, its container's id): what the VM costs the host, shared pages counted fairly."""
    total = 0
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            cgroup = Path(f"/proc/{pid}/cgroup").read_text(errors="replace")
        except OSError:
            continue
        if any(token in cmdline or token in cgroup for token in tokens):
            total += _pss_kib(pid)
    return total / 1024


def memory_tokens(driver_name: str, vm_id: str) -> list[str]:
    tokens = [vm_id]
    if driver_name == "docker":
        import docker

        try:
            tokens.append(docker.from_env().containers.get(vm_id).id)
        except Exception as err:  # the figure is then the agent's share only; say so
            print(f"  (docker: cannot find container {vm_id}: {err})", file=sys.stderr)
    return tokens


# -- through ProjectVM ------------------------------------------------------------------------


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(part, "text", "") for part in result.content)
        raise RuntimeError(f"{tool} failed: {text}")
    assert result.structured_content is not None
    return result.structured_content


async def wait_until_asleep(client: Client, project_id: str, since_id: int) -> int:
    """Follow the feed (long-polls) to the project's next vm.slept; its event id."""
    with anyio.fail_after(120):
        while True:
            feed = await call(
                client, "get_events", project_id=project_id, since_id=since_id, wait_s=30
            )
            for event in feed["events"]:
                if event["kind"] == "vm.slept":
                    return int(event["event_id"])
            since_id = feed["last_event_id"]


async def through_server(config: ServerConfig, runs: int, creates: int, figures: Figures) -> None:
    handle = build_server(config, transport="memory", agent="bench")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        creations: list[float] = []
        for number in range(creates):
            began = time.perf_counter()
            project_id = (await call(client, "create_project", name=f"bench {number}"))[
                "project_id"
            ]
            await call(client, "run_command", project_id=project_id, command="true")
            creations.append(time.perf_counter() - began)
            if number < creates - 1:
                await call(client, "delete_project", project_id=project_id)
        figures.ours["create"] = statistics.median(creations)
        try:
            commands = [
                await timed(
                    lambda: call(client, "run_command", project_id=project_id, command="true")
                )
                for _ in range(runs)
            ]
            figures.ours["command_p50"] = percentile(commands, 0.5)
            figures.ours["command_p95"] = percentile(commands, 0.95)
            writes = [
                await timed(
                    lambda: call(
                        client, "write_file", project_id=project_id, path="b.txt", content=PAYLOAD
                    )
                )
                for _ in range(runs)
            ]
            reads = [
                await timed(lambda: call(client, "read_file", project_id=project_id, path="b.txt"))
                for _ in range(runs)
            ]
            figures.ours["write"] = percentile(writes, 0.5)
            figures.ours["read"] = percentile(reads, 0.5)
            project = await handle.state.service.store.projects.get(project_id)
            assert project is not None
            assert project.vm_id is not None
            figures.ours["memory_mib"] = vm_memory_mib(memory_tokens(config.driver, project.vm_id))
            colds = []
            for _ in range(3):
                await call(client, "stop_project", project_id=project_id)
                began = time.perf_counter()
                await call(client, "start_project", project_id=project_id)
                await call(client, "run_command", project_id=project_id, command="true")
                colds.append(time.perf_counter() - began)
            figures.ours["cold_start"] = statistics.median(colds)
            driver = handle.state.service.drivers.get(config.driver)
            if isinstance(driver, SupportsSuspend):
                await call(
                    client,
                    "update_project_settings",
                    project_id=project_id,
                    settings={"auto_sleep_minutes": 0.01},
                )
                wakes = []
                seen = (await call(client, "get_events", project_id=project_id))["last_event_id"]
                for _ in range(3):
                    seen = await wait_until_asleep(client, project_id, seen)
                    wakes.append(
                        await timed(
                            lambda: call(
                                client, "run_command", project_id=project_id, command="true"
                            )
                        )
                    )
                figures.ours["wake"] = statistics.median(wakes)
        finally:
            await call(client, "delete_project", project_id=project_id)


# -- straight through the driver --------------------------------------------------------------


async def first_command(client: GuestClient) -> None:
    handle = await client.start_exec("true")
    async for _event in handle.events():
        pass


async def through_driver(config: ServerConfig, runs: int, creates: int, figures: Figures) -> None:
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir / "raw"), config.drivers)
    driver = drivers.get(config.driver)

    def spec() -> VMSpec:
        return VMSpec(project_id=f"prj_raw{secrets.token_hex(6)}", name="raw")

    async def hello_and_true(vm_id: str) -> None:
        async with GuestClient(await driver.open_channel(vm_id)) as client:
            await client.hello()
            await first_command(client)

    try:
        creations = []
        vm_id = ""
        for number in range(creates):
            began = time.perf_counter()
            vm_id = (await driver.create_project_vm(spec())).vm_id
            await hello_and_true(vm_id)
            creations.append(time.perf_counter() - began)
            if number < creates - 1:
                await driver.destroy_project_vm(vm_id)
        figures.raw["create"] = statistics.median(creations)
        try:
            async with GuestClient(await driver.open_channel(vm_id)) as client:
                await client.hello()
                commands = [await timed(lambda: first_command(client)) for _ in range(runs)]
                data = PAYLOAD.encode()
                writes = [
                    await timed(lambda: client.write_file("b.txt", data)) for _ in range(runs)
                ]
                reads = [
                    await timed(lambda: client.read_file("b.txt", max_bytes=1 << 20))
                    for _ in range(runs)
                ]
                # While the channel is open, as the server keeps it: some agents live per channel.
                figures.raw["memory_mib"] = vm_memory_mib(memory_tokens(config.driver, vm_id))
            figures.raw["command_p50"] = percentile(commands, 0.5)
            figures.raw["command_p95"] = percentile(commands, 0.95)
            figures.raw["write"] = percentile(writes, 0.5)
            figures.raw["read"] = percentile(reads, 0.5)
            colds = []
            for _ in range(3):
                await driver.stop_project_vm(vm_id)
                began = time.perf_counter()
                await driver.start_project_vm(vm_id)
                await hello_and_true(vm_id)
                colds.append(time.perf_counter() - began)
            figures.raw["cold_start"] = statistics.median(colds)
            if isinstance(driver, SupportsSuspend):
                wakes = []
                for _ in range(3):
                    await driver.suspend_project_vm(vm_id)
                    began = time.perf_counter()
                    await driver.resume_project_vm(vm_id)
                    await hello_and_true(vm_id)
                    wakes.append(time.perf_counter() - began)
                figures.raw["wake"] = statistics.median(wakes)
        finally:
            await driver.destroy_project_vm(vm_id)
    finally:
        await drivers.aclose()


# -- reporting --------------------------------------------------------------------------------


def shown(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == "memory_mib":
        return f"{value:.0f} MiB"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def table(results: dict[str, Figures]) -> str:
    drivers = list(results)
    lines = [
        "| metric | " + " | ".join(f"{d}: ours / raw (x)" for d in drivers) + " |",
        "|---|" + "---|" * len(drivers),
    ]
    for metric, label in LABELS.items():
        cells = []
        for name in drivers:
            ours = results[name].ours.get(metric)
            raw = results[name].raw.get(metric)
            ratio = f" ({ours / raw:.2f}x)" if ours and raw else ""
            cells.append(f"{shown(metric, ours)} / {shown(metric, raw)}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict[str, Figures]) -> list[str]:
    verdicts = []
    for name, figures in results.items():
        for metric, limit in TARGETS.items():
            value = figures.ours.get(metric)
            if value is not None:
                verdict = "meets" if value < limit else "MISSES"
                verdicts.append(
                    f"{name}: {LABELS[metric]} {shown(metric, value)} {verdict} < {limit:g} s"
                )
    return verdicts


def chart_svg(results: dict[str, Figures]) -> str:
    """Small multiples: one panel per metric, a pair of bars (ours, raw) per driver."""
    metrics = [m for m in LABELS if any(m in f.ours or m in f.raw for f in results.values())]
    drivers = list(results)
    panel_w, panel_h, columns = 300, 190, 3
    rows = (len(metrics) + columns - 1) // columns
    width, height = panel_w * columns + 20, panel_h * rows + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        '<text x="10" y="20" font-size="14" font-weight="bold">ProjectVM per driver: through '
        "the server (dark) and straight through the driver (light)</text>",
    ]
    for index, metric in enumerate(metrics):
        x0 = 10 + (index % columns) * panel_w
        y0 = 40 + (index // columns) * panel_h
        out.append(f'<text x="{x0}" y="{y0 + 12}" font-weight="bold">{LABELS[metric]}</text>')
        values = [
            v
            for f in results.values()
            for v in (f.ours.get(metric), f.raw.get(metric))
            if v is not None
        ]
        top = max(values) if values else 1.0
        bar_area_h, base_y = panel_h - 60, y0 + panel_h - 30
        slot = (panel_w - 20) / max(1, len(drivers))
        for position, name in enumerate(drivers):
            sx = x0 + position * slot
            for offset, (value, colour) in enumerate(
                (
                    (results[name].ours.get(metric), "#2f5d8a"),
                    (results[name].raw.get(metric), "#9cc0e0"),
                )
            ):
                if value is None:
                    continue
                h = max(1.0, bar_area_h * value / top)
                bx = sx + 8 + offset * (slot / 2 - 8)
                out.append(
                    f'<rect x="{bx:.1f}" y="{base_y - h:.1f}" width="{slot / 2 - 10:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"/>'
                )
                out.append(
                    f'<text x="{bx:.1f}" y="{base_y - h - 3:.1f}" font-size="9">'
                    f"{shown(metric, value)}</text>"
                )
            out.append(f'<text x="{sx + 8:.1f}" y="{base_y + 14:.1f}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


def config_for(driver: str, data_dir: Path, images: Path | None) -> ServerConfig:
    options: dict[str, dict[str, Any]] = {}
    if images is not None:
        options = {"qemu": {"images": str(images)}, "firecracker": {"images": str(images)}}
    return ServerConfig.load(data_dir / driver, driver=driver, drivers=options)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", default="local,docker,qemu")
    parser.add_argument("--runs", type=int, default=50, help="samples per latency figure")
    parser.add_argument("--creates", type=int, default=3, help="projects created per driver")
    parser.add_argument(
        "--images",
        type=Path,
        default=TEST_IMAGES if TEST_IMAGES.exists() else None,
        help="VM boot artifacts for qemu/firecracker (default: the test image cache)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--chart", type=Path, default=None, help="write the SVG chart here")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="pvm-bench-") as scratch:
        for name in [d.strip() for d in args.drivers.split(",") if d.strip()]:
            config = config_for(name, Path(scratch), args.images)
            drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
            availability = await drivers.get(name).probe()
            await drivers.aclose()
            if not availability.usable:
                print(f"{name}: skipped, {availability.reason}", file=sys.stderr)
                continue
            figures = Figures()
            print(f"{name}: measuring through the server ...", file=sys.stderr)
            await through_server(config, args.runs, args.creates, figures)
            print(f"{name}: measuring straight through the driver ...", file=sys.stderr)
            await through_driver(config, args.runs, args.creates, figures)
            results[name] = figures
    print(table(results))
    print()
    for line in targets(results):
        print(line)
    if args.json:
        print(json.dumps({n: {"ours": f.ours, "raw": f.raw} for n, f in results.items()}))
    if args.chart is not None:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        args.chart.write_text(chart_svg(results))
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    anyio.run(main, parse_arguments())
