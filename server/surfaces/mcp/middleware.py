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
from server.domain.operations import Operation
from server.surfaces.mcp.identity import AppState, caller_of
from server.surfaces.mcp.resources import project_of

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
    if ctx.method == "subscriptions/listen" and ctx.request_id is not None:
        for uri in _listened_uris(ctx.params):
            project_id = project_of(uri)
            if project_id is None:
                continue  # not ours: the SDK honours only what it serves
            try:
                state, caller = caller_of(ctx, Operation.GET_EVENTS)
                await state.service.gate.admit(caller, project_id)
            except (ProjectVMError, ToolError) as err:
                raise MCPError(INVALID_PARAMS, f"cannot listen to {uri}: {err}") from err
    return await call_next(ctx)
