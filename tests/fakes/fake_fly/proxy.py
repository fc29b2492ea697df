"""A fake Fly Proxy: routes an HTTP (or WebSocket) connection to a fake Machine's service.

It reads the request head, finds the app from the Host header (``<app>.fly.dev``) and the
Machine from ``fly-force-instance-id`` (any started Machine of the app without it), connects to
the port the Machine's service listens on, replays the head and then splices bytes both ways.
No TLS (the real proxy terminates it), no autostart: a Machine that is not started answers 503.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["FakeFlyProxy", "Route"]

MAX_HEAD = 16 * 1024
# (host, port) to connect to, or (status, message) to answer with.
Route = tuple[str, int] | tuple[int, str]
Resolver = Callable[[str, str | None], Awaitable[Route]]


def _headers(head: bytes) -> dict[str, str]:
    found = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon:
            found[name.strip().lower()] = value.strip()
    return found


async def _answer(client: anyio.abc.ByteStream, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} Fake Fly Proxy\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    await client.send(head.encode() + body)


async def _pump(source: anyio.abc.ByteReceiveStream, sink: anyio.abc.ByteSendStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


class FakeFlyProxy:
    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._listener: anyio.abc.SocketListener | None = None
        self._scope = anyio.CancelScope()
        self.routed: list[tuple[str, str | None]] = []  # (app, forced instance) per connection

    @property
    def address(self) -> str:
        assert self._listener is not None, "the fake proxy is not serving"
        host, port = self._listener.extra(anyio.abc.SocketAttribute.local_address)[:2]
        return f"{host}:{port}"

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        task_group.start_soon(self._serve, self._listener)

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        try:
            with self._scope:
                await listener.serve(self._handle)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def aclose(self) -> None:
        """Stop accepting and end every routed connection."""
        self._scope.cancel()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            reader = BufferedByteReceiveStream(client)
            try:
                with anyio.fail_after(10):
                    head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD)
            except (TimeoutError, anyio.IncompleteRead, anyio.DelimiterNotFound, OSError):
                return
            head += b"\r\n\r\n"
            headers = _headers(head)
            host = headers.get("host", "").split(":", 1)[0]
            if not host.endswith(".fly.dev"):
                await _answer(client, 404, f"no app answers to host {host!r}")
                return
            app = host[: -len(".fly.dev")]
            forced = headers.get("fly-force-instance-id") or None
            self.routed.append((app, forced))
            route = await self._resolve(app, forced)
            if isinstance(route[0], int):
                await _answer(client, route[0], str(route[1]))
                return
            target_host, target_port = str(route[0]), int(route[1])
            try:
                upstream = await anyio.connect_tcp(target_host, target_port)
            except OSError as err:
                await _answer(client, 502, f"could not reach the Machine's service: {err}")
                return
            async with upstream:
                await upstream.send(head + reader.buffer)
                async with anyio.create_task_group() as group:

                    async def downstream() -> None:
                        await _pump(upstream, client)
                        group.cancel_scope.cancel()

                    group.start_soon(downstream)
                    await _pump(client, upstream)
                    group.cancel_scope.cancel()
