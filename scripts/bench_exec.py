#!/usr/bin/env python3
"""ProjectVM on the docker driver vs raw Docker Engine API calls, side by side, in one run.

    .venv/bin/python scripts/bench_exec.py [--runs 200] [--creates 8] [--json]

Starts `projectvm serve --driver docker` as a stdio subprocess (a real MCP client talks to it
over pipes) and, against the same engine and the same container, times:

  (a) run_command `true` (MCP call -> result)      vs  container.exec_run(["true"])
  (b) read_file / write_file of 4 KiB                vs  get_archive / put_archive of 4 KiB
  (c) create_project -> first command                vs  containers.run + exec_run

and prints p50/p95 of each and the ratio ours/raw (lower is better for us). Needs a Docker-API
engine (DOCKER_HOST) with the runtime image (`projectvm image build`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import docker
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 4096


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p95_ms": percentile(samples, 0.95) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "n": len(samples),
    }


async def timed(runs: int, action: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - began)
    return samples


def timed_sync(runs: int, action: Callable[[], Any]) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        samples.append(time.perf_counter() - began)
    return samples


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        raise SystemExit(f"{tool} failed: {result.content}")
    return result.structured_content


def tar_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def run(runs: int, creates: int) -> dict[str, Any]:
    engine = docker.from_env(timeout=300)
    version = engine.version()
    image = "projectvm/runtime:1"
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "engine": f"{(version.get('Components') or [{}])[0].get('Name', 'engine')} "
            f"{version.get('Version')}",
        }
    }
    with tempfile.TemporaryDirectory() as data_dir:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "server.cli", "--data-dir", data_dir, "serve", "--driver", "docker"],
            env={**os.environ},
            cwd=str(ROOT),
        )
        async with Client(params) as client:
            project = await ok(client, "create_project", name="bench")
            project_id = project["project_id"]
            container = engine.containers.get(project["vm_id"])
            try:
                await ok(client, "run_command", project_id=project_id, command="true")
                await ok(client, "write_file", project_id=project_id, path="f.txt", content="x")
                container.exec_run(["true"])

                # (a) a command
                ours = await timed(
                    runs, lambda: ok(client, "run_command", project_id=project_id, command="true")
                )
                raw = await anyio.to_thread.run_sync(
                    lambda: timed_sync(runs, lambda: container.exec_run(["true"]))
                )
                results["run_command"] = {"ours": summary(ours), "raw_exec_run": summary(raw)}

                # (b) 4 KiB files
                content = PAYLOAD.decode()
                ours_write = await timed(
                    runs,
                    lambda: ok(
                        client, "write_file", project_id=project_id, path="b.txt", content=content
                    ),
                )
                ours_read = await timed(
                    runs, lambda: ok(client, "read_file", project_id=project_id, path="b.txt")
                )
                archive = tar_with("c.txt", PAYLOAD)
                raw_put = await anyio.to_thread.run_sync(
                    lambda: timed_sync(runs, lambda: container.put_archive("/workspace", archive))
                )

                def get() -> None:
                    stream, _ = container.get_archive("/workspace/c.txt")
                    b"".join(stream)

                raw_get = await anyio.to_thread.run_sync(lambda: timed_sync(runs, get))
                results["read_file_4k"] = {
                    "ours": summary(ours_read),
                    "raw_get_archive": summary(raw_get),
                }
                results["write_file_4k"] = {
                    "ours": summary(ours_write),
                    "raw_put_archive": summary(raw_put),
                }
            finally:
                await ok(client, "delete_project", project_id=project_id)

            # (c) a new project to its first command
            async def create_and_run() -> None:
                created = await ok(client, "create_project", name="bench-create")
                await ok(client, "run_command", project_id=created["project_id"], command="true")
                timings.append(time.perf_counter() - began)
                await ok(client, "delete_project", project_id=created["project_id"])

            timings: list[float] = []
            for _ in range(creates):
                began = time.perf_counter()
                await create_and_run()

            def raw_create() -> float:
                began = time.perf_counter()
                box = engine.containers.run(image, ["sleep", "infinity"], detach=True)
                box.exec_run(["true"])
                elapsed = time.perf_counter() - began
                box.remove(force=True)
                return elapsed

            raw_creates = [await anyio.to_thread.run_sync(raw_create) for _ in range(creates)]
            results["create_to_first_command"] = {
                "ours": summary(timings),
                "raw_run_and_exec": summary(raw_creates),
            }
    engine.close()
    return results


def report(results: dict[str, Any]) -> None:
    machine = results["machine"]
    print(
        f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"{machine['engine']}"
    )
    header = ("measure (ms)", "ours p50", "ours p95", "raw", "raw p50", "raw p95", "p50 ratio")
    print("{:<24}{:>9}{:>9}  {:<18}{:>9}{:>9}{:>10}".format(*header))
    for name, pair in results.items():
        if name == "machine":
            continue
        (_, ours), (raw_name, raw) = list(pair.items())[:2]
        ratio = ours["p50_ms"] / raw["p50_ms"]
        pair["p50_ratio"] = ratio
        print(
            f"{name:<24}{ours['p50_ms']:>9.2f}{ours['p95_ms']:>9.2f}  {raw_name:<18}"
            f"{raw['p50_ms']:>9.2f}{raw['p95_ms']:>9.2f}{ratio:>9.3f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="samples for (a) and (b)")
    parser.add_argument("--creates", type=int, default=8, help="samples for (c)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    results = anyio.run(run, args.runs, args.creates)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
