#!/usr/bin/env python3
"""The REST and WebSocket surfaces against MCP, side by side, in one run.

    .venv/bin/python scripts/bench_web.py [--runs 200] [--driver local] [--json]

Starts `projectvm serve --http` as a real process (one port for /mcp and /api/v1), makes an
agent with `projectvm agents add`, and measures against that one server:

  (a) run_command `true`: a REST round trip (POST /api/v1/projects/{id}/executions) vs the
      MCP one over streamable HTTP (tools/call), alternating so both see the same machine;
      the target is REST within 1.3x of MCP;
  (b) a write's event reaching a WebSocket client: from sending PUT .../files/{path} to the
      `file.written` event arriving on /api/v1/projects/{id}/ws (the write's own work in the
      VM included); the target is under 50 ms p50. Also shown: from the event being recorded
      (its created_at, same clock) to its arrival, the delivery alone;
  (c) the dashboard's first page: what a browser fetches to show it (the page at /, what it
      links, every module it imports, transitively, and its session check), as transferred
      (gzip, headers included) and unpacked; the target is under 300 KB transferred.
      tests/web measures the same in Chromium.
  (d) a keystroke's echo in a terminal: a terminal opened over the WebSocket runs
      `cat > /dev/null`, and each character typed (an `input` message) is timed until its echo
      arrives as `output` (through the server, the guest agent and the PTY's line discipline
      and back); beside it, a WebSocket `ping` round trip through the same server, the floor.

Prints p50/p95 of each and the ratios (lower is better for REST).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p95_ms": percentile(samples, 0.95) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "n": len(samples),
    }


def projectvm(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), *args]


def add_agent(data_dir: Path, name: str) -> str:
    printed = subprocess.run(
        projectvm(data_dir, "agents", "add", name), check=True, capture_output=True, text=True
    ).stdout
    return next(word for word in printed.split() if word.startswith("pvm_"))


async def start_server(data_dir: Path, driver: str) -> tuple[anyio.abc.Process, str]:
    process = await anyio.open_process(
        projectvm(data_dir, "serve", "--http", "--port", "0", "--driver", driver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env={**os.environ},
    )
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(60):
        while b"/mcp" not in seen:
            seen += await process.stderr.receive()
    url = next(word for word in seen.decode().split() if word.startswith("http://"))
    return process, url.removesuffix("/mcp")


async def command_round_trips(base: str, token: str, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=base + "/api/v1", headers=headers, timeout=60) as rest,
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(base + "/mcp", http_client=http)) as mcp,
    ):
        created = await rest.post("/projects", json={"name": "bench-web"})
        project_id = created.json()["project_id"]
        url = f"/projects/{project_id}/executions"
        arguments = {"project_id": project_id, "command": "true"}

        async def over_rest() -> None:
            response = await rest.post(url, json={"command": "true"})
            if response.status_code != 201:
                raise SystemExit(f"REST run_command failed: {response.text}")

        async def over_mcp() -> None:
            result = await mcp.call_tool("run_command", arguments)
            if result.is_error:
                raise SystemExit(f"MCP run_command failed: {result.content}")

        for _ in range(10):  # warm-up: connections, the VM's first commands
            await over_rest()
            await over_mcp()
        rest_samples, mcp_samples = [], []
        for _ in range(runs):
            began = time.perf_counter()
            await over_mcp()
            mcp_samples.append(time.perf_counter() - began)
            began = time.perf_counter()
            await over_rest()
            rest_samples.append(time.perf_counter() - began)
        await rest.delete(f"/projects/{project_id}")
    return {"rest": summary(rest_samples), "mcp": summary(mcp_samples)}


async def event_latency(base: str, token: str, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base + "/api/v1", headers=headers, timeout=60) as rest:
        project_id = (await rest.post("/projects", json={"name": "bench-ws"})).json()["project_id"]
        ws_url = base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"
        protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{token}")]
        latencies, writes, deliveries = [], [], []
        async with connect(ws_url, subprotocols=protocols) as ws:
            await ws.recv()  # hello
            last = (await rest.get(f"/projects/{project_id}/events?limit=1000")).json()
            await ws.send(
                json.dumps(
                    {"stream": "events", "type": "subscribe", "since_id": last["last_event_id"]}
                )
            )
            await ws.recv()  # ack
            for number in range(runs + 10):
                path = f"bench/{number}.txt"
                began = time.perf_counter()
                written = await rest.put(f"/projects/{project_id}/files/{path}", content=b"x")
                wrote = time.perf_counter() - began
                while True:
                    message = json.loads(await ws.recv())
                    event = message.get("event") or {}
                    if event.get("kind") == "file.written" and event["data"]["path"] == path:
                        break
                arrived = time.perf_counter() - began
                recorded = datetime.fromisoformat(event["created_at"]).timestamp()
                if written.status_code != 201:
                    raise SystemExit(f"write failed: {written.text}")
                if number >= 10:  # after the warm-up
                    latencies.append(arrived)
                    writes.append(wrote)
                    deliveries.append(time.time() - recorded)
        await rest.delete(f"/projects/{project_id}")
    return {
        "write_to_event": summary(latencies),
        "write_round_trip": summary(writes),
        "recorded_to_event": summary(deliveries),
    }


def _assets_named(text: str, url: str) -> list[str]:
    """The dashboard files a page or module loads at once (not its dynamic imports)."""
    found = re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', text)
    found += re.findall(r'^import .*? from "([^"]+)";', text, re.MULTILINE)
    found += re.findall(r'^import "([^"]+)";', text, re.MULTILINE)
    folder = url.rsplit("/", 1)[0]
    resolved = []
    for target in found:
        if target.startswith("/"):
            resolved.append(target)
        else:  # relative to the module: ./x.js, ../y.js
            parts = (folder + "/" + target).split("/")
            stack: list[str] = []
            for part in parts:
                if part == "..":
                    stack.pop()
                elif part != ".":
                    stack.append(part)
            resolved.append("/".join(stack))
    return resolved


async def first_page_weight(base: str) -> dict[str, Any]:
    """Fetch the dashboard's first page as a browser does on a first visit, and weigh it."""
    wire = unpacked = 0
    fetched: list[str] = []
    async with httpx.AsyncClient(
        base_url=base, timeout=60, headers={"Accept-Encoding": "gzip"}
    ) as client:
        queue = ["/", "/ui/session"]
        while queue:
            url = queue.pop(0)
            if url in fetched:
                continue
            fetched.append(url)
            response = await client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"the dashboard answered {response.status_code} for {url}")
            headers = sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 17
            wire += headers + response.num_bytes_downloaded
            unpacked += len(response.content)
            if response.headers.get("content-type", "").startswith(("text/html", "text/java")):
                queue += _assets_named(response.text, url)
    return {"requests": len(fetched), "transferred_bytes": wire, "unpacked_bytes": unpacked}


async def keystroke_echo(base: str, token: str, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base + "/api/v1", headers=headers, timeout=60) as rest:
        project_id = (await rest.post("/projects", json={"name": "bench-tty"})).json()["project_id"]
        ws_url = base.replace("http://", "ws://") + f"/api/v1/projects/{project_id}/ws"
        protocols = [Subprotocol("projectvm.v1"), Subprotocol(f"bearer.{token}")]
        echoes, pings = [], []
        async with connect(ws_url, subprotocols=protocols) as ws:
            await ws.recv()  # hello
            # The terminal echoes what is typed; cat's own output (the lines) goes nowhere, so
            # every output message is an echo.
            opening = {"stream": "terminal", "type": "open", "command": "cat > /dev/null"}
            await ws.send(json.dumps(opening))
            opened = json.loads(await ws.recv())
            if opened.get("type") != "ack":
                raise SystemExit(f"open_terminal failed: {opened}")
            terminal = opened["result"]["execution_id"]

            async def echo_of(key: str) -> float:
                began = time.perf_counter()
                typed = {"stream": "terminal", "type": "input", "execution_id": terminal}
                await ws.send(json.dumps({**typed, "data": key}))
                seen = b""
                while key.encode() not in seen:
                    message = json.loads(await ws.recv())
                    if message.get("type") == "error":
                        raise SystemExit(f"typing failed: {message}")
                    if message.get("type") == "output":
                        seen += base64.b64decode(message["data"])
                return time.perf_counter() - began

            for number in range(runs + 10):
                key = "abcdefghijklmnopqrstuvwxyz"[number % 26]
                took = await echo_of(key)
                if number % 40 == 39:
                    await echo_of("\r")  # a short line: cat prints it, the next one starts
                began = time.perf_counter()
                await ws.send(json.dumps({"stream": "session", "type": "ping"}))
                while json.loads(await ws.recv()).get("type") != "pong":
                    pass
                if number >= 10:
                    echoes.append(took)
                    pings.append(time.perf_counter() - began)
        await rest.delete(f"/projects/{project_id}")
    return {"keystroke_echo": summary(echoes), "ping": summary(pings)}


async def run(runs: int, driver: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pvm-bench-web-") as folder:
        data_dir = Path(folder) / "data"
        token = add_agent(data_dir, "bench")
        process, base = await start_server(data_dir, driver)
        try:
            commands = await command_round_trips(base, token, runs)
            events = await event_latency(base, token, runs)
            dashboard = await first_page_weight(base)
            terminal = await keystroke_echo(base, token, runs)
        finally:
            process.terminate()
            with anyio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    return {
        "driver": driver,
        "runs": runs,
        "run_command": commands,
        "ratio_rest_over_mcp_p50": commands["rest"]["p50_ms"] / commands["mcp"]["p50_ms"],
        "events": events,
        "dashboard_first_page": dashboard,
        "terminal": terminal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--driver", default="local")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    figures = anyio.run(run, options.runs, options.driver)
    if options.json:
        print(json.dumps(figures, indent=2))
        return
    commands, events = figures["run_command"], figures["events"]
    print(f"driver {figures['driver']}, {figures['runs']} runs each")
    for name in ("mcp", "rest"):
        s = commands[name]
        print(f"  run_command over {name:4}: p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms")
    ratio = figures["ratio_rest_over_mcp_p50"]
    print(f"  REST / MCP (p50): {ratio:.2f}x  (target: within 1.3x)")
    latency, write = events["write_to_event"], events["write_round_trip"]
    delivery = events["recorded_to_event"]
    print(
        f"  write -> WebSocket event: p50 {latency['p50_ms']:.2f} ms  p95 {latency['p95_ms']:.2f}"
        " ms  (target: under 50 ms p50)"
    )
    print(f"    the write's own round trip: p50 {write['p50_ms']:.2f} ms")
    print(f"    event recorded -> on the WebSocket: p50 {delivery['p50_ms']:.2f} ms")
    page = figures["dashboard_first_page"]
    print(
        f"  dashboard first page: {page['transferred_bytes'] / 1000:.1f} KB transferred (gzip) "
        f"in {page['requests']} requests, {page['unpacked_bytes'] / 1000:.1f} KB unpacked  "
        "(target: under 300 KB)"
    )
    echo, ping = figures["terminal"]["keystroke_echo"], figures["terminal"]["ping"]
    print(
        f"  terminal keystroke -> echo over the WebSocket: p50 {echo['p50_ms']:.2f} ms  "
        f"p95 {echo['p95_ms']:.2f} ms"
    )
    print(f"    a WebSocket ping round trip (the floor): p50 {ping['p50_ms']:.2f} ms")


if __name__ == "__main__":
    main()
