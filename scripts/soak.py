#!/usr/bin/env python3
"""Soak: many agents hammer one project over streamable HTTP for a while; nothing may be lost.

    .venv/bin/python scripts/soak.py [--agents 100] [--seconds 60] [--driver local]

Starts `projectvm serve --http` (a real server process) on a fresh data directory, gives every
agent its own token and read_write access to one shared project, and lets them run commands,
write, read and list files at random until the time is up. Then it checks, in the database,
that every call acknowledged to an agent is recorded: each execution with its agent and exit
code, each write as an event. Exits 1 on any error or any missing record.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.core.agents import Agents  # noqa: E402
from server.domain.models import ExecutionStatus  # noqa: E402
from server.store import Store  # noqa: E402
from tests.servers import serve_process  # noqa: E402


class Tally:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.errors: list[str] = []
        self.executions: dict[str, str] = {}  # execution_id -> agent
        self.writes: list[tuple[str, str]] = []  # (agent, path)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise RuntimeError(f"{tool}: {text}")
    return result.structured_content


async def agent(
    name: str, token: str, url: str, project_id: str, deadline: float, tally: Tally
) -> None:
    rng = random.Random(name)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        number = 0
        while time.monotonic() < deadline:
            number += 1
            action = rng.choice(["run", "run", "write", "read", "list"])
            tally.calls[action] += 1
            try:
                if action == "run":
                    done = await ok(
                        client,
                        "run_command",
                        project_id=project_id,
                        command=f"echo {name} {number}",
                    )
                    if done["stdout"] != f"{name} {number}\n":
                        raise RuntimeError(f"wrong output {done['stdout']!r}")
                    tally.executions[done["execution_id"]] = name
                elif action == "write":
                    path = f"{name}/{number}.txt"
                    await ok(
                        client,
                        "write_file",
                        project_id=project_id,
                        path=path,
                        content=f"{name} {number}",
                    )
                    tally.writes.append((name, path))
                elif action == "read" and tally.writes:
                    _, path = rng.choice(tally.writes)
                    await ok(client, "read_file", project_id=project_id, path=path)
                else:
                    await ok(client, "list_files", project_id=project_id)
            except Exception as err:
                tally.errors.append(f"{name} {action}: {err}")


async def soak(agents: int, seconds: float, driver: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="projectvm-soak-") as scratch:
        data_dir = Path(scratch)
        names = [f"soak-{i:03d}" for i in range(agents)]
        async with await Store.open(data_dir / "projectvm.db") as store:
            agents_registry = Agents(store)
            owner = await agents_registry.issue_token("owner")
            tokens = {name: await agents_registry.issue_token(name) for name in names}
        tally = Tally()
        began = time.monotonic()
        async with serve_process(data_dir, driver=driver, cwd=ROOT) as (_, url):
            headers = {"Authorization": f"Bearer {owner}"}
            async with (
                create_mcp_http_client(headers=headers) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                project_id = (await ok(client, "create_project", name="soak"))["project_id"]
                for name in names:
                    await ok(
                        client,
                        "assign_agent",
                        project_id=project_id,
                        agent_id=name,
                        access_level="read_write",
                    )
                deadline = time.monotonic() + seconds
                with anyio.fail_after(seconds + 300):
                    async with anyio.create_task_group() as group:
                        for name in names:
                            group.start_soon(
                                agent, name, tokens[name], url, project_id, deadline, tally
                            )
                await ok(client, "delete_project", project_id=project_id)
        elapsed = time.monotonic() - began
        async with await Store.open(data_dir / "projectvm.db") as store:
            integrity = await store.integrity_check()
            rows = await store.executions.page(project_id, limit=10_000_000)
            recorded = {e.execution_id: e for e in rows}
            events = await store.events.after(project_id, 0, 10_000_000)
    written = {(e.agent_id, e.data.get("path")) for e in events if e.kind == "file.written"}
    missing_executions = [e for e in tally.executions if e not in recorded]
    misattributed = [
        e for e, a in tally.executions.items() if e in recorded and recorded[e].agent_id != a
    ]
    unfinished = [e for e in recorded.values() if e.status != ExecutionStatus.COMPLETED]
    missing_writes = [w for w in tally.writes if w not in written]
    return {
        "agents": agents,
        "seconds": round(elapsed, 1),
        "calls": sum(tally.calls.values()),
        "calls_by_kind": dict(tally.calls),
        "calls_per_second": round(sum(tally.calls.values()) / elapsed, 1),
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "executions_acknowledged": len(tally.executions),
        "executions_recorded": len(recorded),
        "missing_executions": len(missing_executions),
        "misattributed_executions": len(misattributed),
        "not_completed": len(unfinished),
        "writes_acknowledged": len(tally.writes),
        "missing_write_events": len(missing_writes),
        "database_integrity": integrity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--driver", default="local")
    args = parser.parse_args()
    report = anyio.run(soak, args.agents, args.seconds, args.driver)
    print(json.dumps(report, indent=2))
    clean = (
        report["errors"] == 0
        and report["missing_executions"] == 0
        and report["misattributed_executions"] == 0
        and report["not_completed"] == 0
        and report["missing_write_events"] == 0
        and report["executions_recorded"] == report["executions_acknowledged"]
        and report["database_integrity"] == "ok"
    )
    print("soak: clean" if clean else "soak: FAILED", file=sys.stderr)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
