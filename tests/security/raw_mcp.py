"""MCP spoken by hand over streamable HTTP: what a hostile client can send that the SDK's client
never would (another agent's session id, a request id already in flight)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from anyio.abc import Process

__all__ = ["RawSession", "RawStdio", "sse_messages"]

PROTOCOL_VERSION = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


async def sse_messages(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of a response: one JSON body, or the ``data:`` lines of an SSE
    stream, as they arrive."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        await response.aread()
        yield response.json()
        return
    async for line in response.aiter_lines():
        if line.startswith("data:") and line[5:].strip():
            yield json.loads(line[5:])


@dataclass
class RawSession:
    """One agent's MCP session, opened with ``initialize`` and driven message by message."""

    http: httpx2.AsyncClient
    url: str
    token: str
    session_id: str
    next_id: int = 100

    @classmethod
    async def open(cls, http: httpx2.AsyncClient, url: str, token: str) -> RawSession:
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        response = await http.post(url, json=initialize, headers=cls._headers(token, None))
        assert response.status_code == 200, response.text
        session = cls(http, url, token, response.headers["mcp-session-id"])
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await session.post(initialized)).status_code == 202
        return session

    @staticmethod
    def _headers(token: str, session_id: str | None) -> dict[str, str]:
        headers = {
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
        }
        if session_id is not None:
            headers["Mcp-Session-Id"] = session_id
        return headers

    def headers(self, *, token: str | None = None) -> dict[str, str]:
        """This session's headers, with another agent's token when ``token`` is given."""
        return self._headers(token or self.token, self.session_id)

    async def post(self, message: dict[str, Any], *, token: str | None = None) -> httpx2.Response:
        """POST one message in this session and read the whole response."""
        return await self.http.post(self.url, json=message, headers=self.headers(token=token))

    def request_message(
        self, method: str, params: dict[str, Any], request_id: int | None = None
    ) -> dict[str, Any]:
        """A request with a fresh id (or ``request_id``)."""
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}

    @asynccontextmanager
    async def streaming(
        self, message: dict[str, Any], *, token: str | None = None
    ) -> AsyncIterator[httpx2.Response]:
        """POST a request and keep its response stream open while the block runs."""
        async with self.http.stream(
            "POST", self.url, json=message, headers=self.headers(token=token)
        ) as response:
            yield response

    async def answer(self, response: httpx2.Response, request_id: int) -> dict[str, Any]:
        """The JSON-RPC answer to ``request_id`` on a response stream."""
        async for message in sse_messages(response):
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
        raise AssertionError(f"the response ended without an answer to request {request_id}")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call a tool that must succeed; its structured result."""
        message = self.request_message("tools/call", {"name": name, "arguments": arguments})
        async with self.streaming(message) as response:
            assert response.status_code == 200, await response.aread()
            answer = await self.answer(response, message["id"])
        result = answer["result"]
        assert not result.get("isError"), f"{name} failed: {result}"
        return dict(result["structuredContent"])


@dataclass
class RawStdio:
    """One MCP connection to a ``projectvm serve`` process, spoken line by line over stdio."""

    process: Process
    buffer: bytes = b""

    @classmethod
    @asynccontextmanager
    async def serve(cls, argv: list[str]) -> AsyncIterator[RawStdio]:
        """Start the server process, initialize, and stop it (terminate, then kill) after."""
        process = await anyio.open_process(argv, stderr=subprocess.DEVNULL)
        try:
            connection = cls(process)
            initialize = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                },
            }
            await connection.send(initialize)
            assert "result" in await connection.receive(), "initialize failed"
            await connection.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield connection
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(30):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await process.aclose()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        """The next message from the server (notifications included), within 60 s."""
        assert self.process.stdout is not None
        with anyio.fail_after(60):
            while b"\n" not in self.buffer:
                self.buffer += await self.process.stdout.receive()
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    async def answer(self, request_id: int) -> dict[str, Any]:
        """The next answer (result or error) carrying ``request_id``, skipping the rest."""
        while True:
            message = await self.receive()
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
