"""One request per id at a time in an MCP session over HTTP, checked before the SDK sees it.

The SDK's HTTP transport routes each answer to the POST whose request had that id, one POST
per id: a second POST with an id still in flight takes the route over, and the first request's
answer never reaches its caller. So the repeat is refused here, before the transport, with a
400 and a JSON-RPC error carrying its id; the first request runs on and is answered. (The MCP
middleware ``server.surfaces.mcp.request_ids`` checks the same over every transport, for what
reaches the SDK some other way.)

Ids are counted per agent and session: another agent's requests cannot use up or probe a
session's ids (it is refused as an unknown session anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic_core
from mcp.types import INVALID_REQUEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.surfaces.http.auth import send_json
from server.surfaces.mcp.identity import AGENT_STATE_KEY
from server.surfaces.mcp.request_ids import duplicate_request_message

__all__ = ["UniqueRequestIds"]

SESSION_HEADER = b"mcp-session-id"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _request_id(body: bytes) -> int | str | None:
    """The id of the JSON-RPC request in ``body``; None for anything else (a notification, a
    response, malformed JSON: the SDK answers those)."""
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return None
    if not isinstance(message, Mapping) or not isinstance(message.get("method"), str):
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Message]]:
    """The whole request body, or None when it is larger than ``limit`` or the client went away
    (then the SDK sees the request as it came and answers it); plus every message read."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        size += len(message.get("body", b""))
        if size > limit:
            return None, messages
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in messages), messages


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``messages`` again, then whatever comes next (a disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class UniqueRequestIds:
    """ASGI middleware in front of the MCP endpoint: refuses a POSTed request whose id is
    already in flight in the same session for the same agent."""

    def __init__(self, app: ASGIApp, path: str, max_body_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_body_bytes = max_body_bytes
        self._in_flight: set[tuple[str, str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _header(scope, SESSION_HEADER) if scope["type"] == "http" else None
        if session_id is None or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self.app(scope, receive, send)  # the SDK refuses it (413) unread
            return
        body, messages = await _read_body(receive, self.max_body_bytes)
        if body is not None:  # hand the body on in one piece: the SDK joins it without a copy
            messages = [{"type": "http.request", "body": body, "more_body": False}]
        receive = _replaying(messages, receive)
        request_id = _request_id(body) if body is not None else None
        if request_id is None:
            await self.app(scope, receive, send)
            return
        state: Mapping[str, Any] = scope.get("state", {})
        key = (str(state.get(AGENT_STATE_KEY)), session_id, str(request_id))  # the SDK's key
        if key in self._in_flight:
            error = {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {
                    "code": INVALID_REQUEST,
                    "message": duplicate_request_message(request_id),
                },
            }
            await send_json(send, 400, pydantic_core.to_json(error), [])
            return
        self._in_flight.add(key)
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight.discard(key)
