#!/usr/bin/env python3
"""Slow clients against a real server: can new clients still get in?

    .venv/bin/python scripts/http_slow_clients.py [--slow 300] [--open-files 128:256]
        [--reconnect] [--tries 10] [--driver process]

Starts `projectvm serve --http` (optionally under an open-file limit, soft:hard), then a
separate attacker process holding --slow connections that each send part of a request's
headers and never the rest (with --reconnect, each one the server closes is opened again at
once: a connection flood). While it runs, --tries new clients each connect, initialize and call
list_projects, each within 2 s; prints how many made it and how long they took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.core.agents import Agents  # noqa: E402
from server.store import Store  # noqa: E402
from tests.helpers import call  # noqa: E402
from tests.security.slow_clients import SlowClients  # noqa: E402
from tests.servers import http_client, serve_process  # noqa: E402


async def attacker(host: str, port: int, count: int, reconnect: bool) -> None:
    attack = SlowClients(host, port, count, reconnect=reconnect)
    async with anyio.create_task_group() as group:
        group.start_soon(attack.run)
        await attack.all_tried.wait()
        print("ready", flush=True)
        # Runs until the main process stops it; says how many it opened when asked (stdin).
        await anyio.wrap_file(sys.stdin).readline()
        print(f"opened {attack.connected}, closed by the server {attack.closed}", flush=True)
        group.cancel_scope.cancel()


async def _line(process: Process) -> str:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(60):
        while not seen.endswith(b"\n"):
            seen += await process.stdout.receive(1)
    return seen.decode().strip()


async def measure(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="projectvm-slow-")) / "data"
    data_dir.mkdir(parents=True)
    async with await Store.open(data_dir / "projectvm.db") as store:
        token = await Agents(store).issue_token("alice")
    limits: tuple[int, int] | None = None
    if args.open_files:
        soft, hard = args.open_files.split(":")
        limits = (int(soft), int(hard))
    async with serve_process(data_dir, driver=args.driver, open_files=limits) as (_, url):
        parts = urlsplit(url)
        flags = ["--reconnect"] if args.reconnect else []
        command = [sys.executable, __file__, "--attacker", f"{parts.hostname}:{parts.port}"]
        command += ["--slow", str(args.slow), *flags]
        async with await anyio.open_process(command) as flood:
            assert flood.stdin is not None
            print(f"attacker: {await _line(flood)}")
            times: list[float] = []
            failures: list[str] = []
            for _ in range(args.tries):
                started = time.monotonic()
                try:
                    with anyio.fail_after(2):
                        async with http_client(url, token) as alice:
                            await call(alice, "list_projects")
                    times.append(time.monotonic() - started)
                except Exception as err:  # a failure to report, whatever it is
                    failures.append(type(err).__name__)
            await flood.stdin.send(b"report\n")
            print(f"attacker: {await _line(flood)}")
            flood.terminate()
    print(
        f"{len(times)}/{args.tries} new clients called a tool within 2 s "
        f"({', '.join(f'{t:.2f}' for t in times)} s); failures: {failures or 'none'}"
    )
    return 0 if not failures else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--open-files", default="128:256", help="soft:hard, or '' for none")
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--driver", default="process")
    parser.add_argument("--attacker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        host, port = args.attacker.rsplit(":", 1)
        anyio.run(attacker, host, int(port), args.slow, args.reconnect)
        return 0
    return anyio.run(measure, args)


if __name__ == "__main__":
    sys.exit(main())
