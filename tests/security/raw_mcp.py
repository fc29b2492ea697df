"""MCP spoken by hand over streamable HTTP: what a hostile client can send that the SDK's client
never would (another agent's session id, a request id already in flight)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2

__all__ = ["RawSession", "sse_messages"]

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
