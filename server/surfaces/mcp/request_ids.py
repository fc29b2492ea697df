"""One request per id at a time on a connection: a second request with an id still in flight
is refused with a JSON-RPC error instead of being served.

JSON-RPC ids must be unique among a client's unanswered requests. The SDK does not check: it
serves both and the two answers carry the same id, so a client cannot tell them apart (over
HTTP the first one's answer even goes to the second one's response and the first never gets
one). This middleware remembers the ids being served on each connection and answers a repeat
with INVALID_REQUEST at once, while the first request runs on and is answered normally.

What it cannot undo: the SDK's dispatcher has already noted the repeat as the id's request by
the time any middleware runs, so a ``notifications/cancelled`` for that id no longer reaches
the first request (over stdio and in memory; over HTTP the repeat is refused before the SDK
sees it, by ``server.surfaces.http.request_ids``).
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_REQUEST

__all__ = ["duplicate_request_message", "unique_request_ids"]

# Where each connection keeps the ids of the requests it is serving (Connection.state).
IN_FLIGHT_KEY = "projectvm.requests_in_flight"


def duplicate_request_message(request_id: object) -> str:
    return (
        f"request id {request_id!r} is already in flight in this session; the request "
        "using it is still being served and will be answered: send this one again with an "
        "id none of your unanswered requests uses"
    )


def _in_flight_ids(ctx: ServerRequestContext[Any, Any]) -> set[object] | None:
    """The set of ids being served on this request's connection, or None if the SDK does not
    let us reach the connection (then nothing is checked)."""
    # The per-connection state is not exposed on the request context yet (SDK 2.3): reach it
    # through the session proxy. tests/security/test_sessions.py fails if this stops working.
    connection = getattr(ctx.session, "_connection", None)
    state = getattr(connection, "state", None)
    if not isinstance(state, dict):
        return None
    ids: set[object] = state.setdefault(IN_FLIGHT_KEY, set())
    return ids


async def unique_request_ids(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    if ctx.request_id is None:
        return await call_next(ctx)
    in_flight = _in_flight_ids(ctx)
    if in_flight is None:
        return await call_next(ctx)
    key = coerce_request_id(ctx.request_id)  # "7" and 7 are one id to the SDK
    if key in in_flight:
        raise MCPError(INVALID_REQUEST, duplicate_request_message(ctx.request_id))
    in_flight.add(key)
    try:
        return await call_next(ctx)
    finally:
        in_flight.discard(key)
