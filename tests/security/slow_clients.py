"""Clients too slow to ever finish a request: what a slowloris attack opens."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketStream

__all__ = ["PARTIAL_HEADERS", "SlowClients", "closed_by_server"]

# The request line and a header of a request that never finishes its headers.
PARTIAL_HEADERS = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"


async def closed_by_server(stream: SocketStream, drip: bytes = b"") -> None:
    """Wait until the server closes ``stream``, sending ``drip`` each second meanwhile (a
    client too slow to finish, but never silent)."""
    while True:
        with anyio.move_on_after(1):
            try:
                while await stream.receive():
                    pass  # a response (a 401, a 408): the close follows
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
        if drip:
            try:
                await stream.send(drip)
            except (anyio.BrokenResourceError, OSError):
                return


@dataclass
class SlowClients:
    """``count`` connections that each send part of a request and never the rest (with
    ``reconnect``, each one the server closes is opened again, as fast as it can be)."""

    host: str
    port: int
    count: int
    reconnect: bool = False
    connected: int = 0
    closed: int = 0
    all_tried: anyio.Event = field(default_factory=anyio.Event)

    async def one(self) -> None:
        while True:
            try:
                stream = await anyio.connect_tcp(self.host, self.port)
            except OSError:
                await anyio.lowlevel.checkpoint()
                continue
            async with stream:
                try:
                    await stream.send(PARTIAL_HEADERS)
                except (anyio.BrokenResourceError, OSError):
                    pass
                self.connected += 1
                if self.connected >= self.count:
                    self.all_tried.set()
                await closed_by_server(stream)
            self.closed += 1
            if not self.reconnect:
                return

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            for _ in range(self.count):
                group.start_soon(self.one)
