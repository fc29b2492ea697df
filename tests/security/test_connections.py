"""Slow, idle and surplus HTTP connections cannot keep clients out (issue 9, finding 12).

Measured against real ``projectvm serve --http`` processes on free ports, with the default
limits. What is tested happens in the HTTP server, before any driver is involved, so it runs
once, on the ``process`` driver (usable everywhere), not once per driver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from server.domain.config import Limits
from server.store import Store
from tests.helpers import call, issue_token
from tests.security.slow_clients import PARTIAL_HEADERS, SlowClients, closed_by_server
from tests.servers import http_client, serve_process

pytestmark = pytest.mark.anyio

LIMITS = Limits()
# The longest any connection that is not being served may stay open, with the default limits:
# the headers' deadline, then the body's (a trickled body adds next to nothing), and the
# guard's one-second sweep.
LONGEST = LIMITS.http_request_header_timeout_s + LIMITS.http_request_body_timeout_s + 2


async def alice_token(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    async with await Store.open(data_dir / "projectvm.db") as store:
        return await issue_token(store, "alice")


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


async def test_300_slow_connections_cannot_keep_a_new_client_from_calling_a_tool(
    data_dir: Path,
) -> None:
    token = await alice_token(data_dir)
    # Started with a soft limit of 128 open files (hard 256): without a cap, 300 connections
    # exhaust it and accept() fails for everyone after.
    async with serve_process(data_dir, driver="process", open_files=(128, 256)) as (server, url):
        attack = SlowClients(*address(url), count=300)
        async with anyio.create_task_group() as group:
            group.start_soon(attack.run)
            with anyio.fail_after(30):
                await attack.all_tried.wait()
            started = anyio.current_time()
            try:
                with anyio.fail_after(2):
                    async with http_client(url, token) as alice:
                        projects = await call(alice, "list_projects")
            except TimeoutError:
                raise AssertionError(
                    f"a new client could not call a tool within 2 s while {attack.count} slow "
                    f"connections were open ({attack.closed} closed by the server)"
                ) from None
            elapsed = anyio.current_time() - started
            group.cancel_scope.cancel()
        assert projects["projects"] == []
        print(f"new client connected and called a tool in {elapsed:.2f} s under the attack")
        # The server raised its soft limit to the hard one: as many connections as it may have.
        assert open_file_limits(server.pid) == (256, 256), "the soft limit was not raised"


@dataclass
class Watched:
    what: str
    opened: float
    lifetime: float | None = None


async def test_idle_and_slow_connections_are_closed_within_30_seconds(data_dir: Path) -> None:
    token = await alice_token(data_dir)
    async with serve_process(data_dir, driver="process") as (_, url):
        host, port = address(url)
        watched: list[Watched] = []

        async def watch(what: str, start: bytes, drip: bytes = b"") -> None:
            stream = await anyio.connect_tcp(host, port)
            entry = Watched(what, anyio.current_time())
            watched.append(entry)
            async with stream:
                if start:
                    await stream.send(start)
                await closed_by_server(stream, drip)
            entry.lifetime = anyio.current_time() - entry.opened

        authorized = f"Authorization: Bearer {token}\r\n".encode()
        clients: dict[str, Callable[[], Awaitable[None]]] = {
            # connects and says nothing
            "idle": lambda: watch("idle", b""),
            # sends a header byte a second, never finishing
            "slow headers": lambda: watch("slow headers", PARTIAL_HEADERS, drip=b"x"),
            # an authorized POST whose body comes a byte a second
            "slow body": lambda: watch(
                "slow body",
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\n"
                + authorized
                + b"Content-Length: 100000\r\n\r\n{",
                drip=b" ",
            ),
            # completes a request, then stays without another
            "kept alive": lambda: watch(
                "kept alive", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            ),
        }
        async with http_client(url, token) as alice:
            project_id = (await call(alice, "create_project", name="long call"))["project_id"]
            try:
                async with anyio.create_task_group() as group:
                    # A tool call that lasts longer than every deadline is not cut short.
                    answer: dict[str, object] = {}

                    async def long_call() -> None:
                        answer.update(
                            await call(
                                alice,
                                "run_command",
                                project_id=project_id,
                                command="read line; echo got $line",
                                keep_stdin_open=True,
                            )
                        )

                    group.start_soon(long_call)
                    with anyio.fail_after(LONGEST + 30):
                        async with anyio.create_task_group() as slow:
                            for start in clients.values():
                                for _ in range(10):
                                    slow.start_soon(start)
                    running = await call(alice, "list_executions", project_id=project_id)
                    (execution,) = running["executions"]
                    await call(
                        alice,
                        "send_input",
                        execution_id=execution["execution_id"],
                        data="hello\n",
                        eof=True,
                    )
                assert answer["stdout"] == "got hello\n"
            finally:
                await call(alice, "delete_project", project_id=project_id)
        longest: dict[str, float] = {}
        for entry in watched:
            assert entry.lifetime is not None
            longest[entry.what] = max(longest.get(entry.what, 0.0), entry.lifetime)
        print("longest lifetime per kind:", {k: round(v, 1) for k, v in longest.items()})
        assert all(lifetime <= 30 for lifetime in longest.values()), longest
