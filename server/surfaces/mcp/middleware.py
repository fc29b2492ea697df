"""MCP middleware: access checks on messages that reach no tool.

``subscriptions/listen`` opens a stream of update notifications for the URIs the client names;
a caller may only listen to the event feeds of projects it may read (the get_events operation),
so a stranger cannot even learn when another project changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.domain.operations import Operation
from server.surfaces.mcp.identity import AppState, identify
from server.surfaces.mcp.resources import LISTENING_AS, project_of

__all__ = ["listen_guard"]


def _listened_uris(params: Mapping[str, Any] | None) -> list[str]:
    notifications = (params or {}).get("notifications")
    if not isinstance(notifications, Mapping):
        return []
    uris = notifications.get("resourceSubscriptions") or []
    return [uri for uri in uris if isinstance(uri, str)] if isinstance(uris, list) else []


async def listen_guard(
    ctx: ServerRequestContext[AppState, Any], call_next: CallNext
) -> HandlerResult:
    if ctx.method != "subscriptions/listen" or ctx.request_id is None:
        return await call_next(ctx)
    try:
        state, agent = identify(ctx)
    except ToolError as err:
        raise MCPError(INVALID_PARAMS, str(err)) from err
    for uri in _listened_uris(ctx.params):
        project_id = project_of(uri)
        if project_id is None:
            continue  # not ours: the SDK honours only what it serves
        try:
            caller = Caller(agent, state.transport, Operation.GET_EVENTS)
            await state.service.gate.admit(caller, project_id)
        except ProjectVMError as err:
            raise MCPError(INVALID_PARAMS, f"cannot listen to {uri}: {err}") from err
    # The listen handler subscribes within this call: the bus learns who listens from here.
    token = LISTENING_AS.set((state, agent))
    try:
        return await call_next(ctx)
    finally:
        LISTENING_AS.reset(token)
