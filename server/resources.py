"""MCP resources: a project's event feed at ``project://{project_id}/events``, with updates.

Clients of the current protocol follow it with ``subscriptions/listen``; clients of the
2025 protocol with ``resources/subscribe``, which the SDK's ``MCPServer`` leaves to the server,
so it is registered here on the low-level server. Either way a subscriber is told *that* the
feed changed and reads it (with its own access checked) to see *what* changed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import mcp.types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated

from guest_runtime.errors import ProjectVMError
from server.errors import NotFound
from server.events import Publisher
from server.models import AccessLevel
from server.state import AppState, identify

__all__ = ["EVENTS_URI", "register_resources"]

EVENTS_URI = "project://{project_id}/events"
PREFIX, SUFFIX = "project://", "/events"
RECENT_EVENTS = 200
MAX_LEGACY_SUBSCRIBERS = 256


def events_uri(project_id: str) -> str:
    return EVENTS_URI.format(project_id=project_id)


def _project_of(uri: str) -> str | None:
    if uri.startswith(PREFIX) and uri.endswith(SUFFIX):
        project_id = uri[len(PREFIX) : -len(SUFFIX)]
        return project_id or None
    return None


def register_resources(mcp: MCPServer, bus: InMemorySubscriptionBus) -> Publisher:
    """Register the event feed; returns the publisher to call when a project's feed grows."""
    # Sessions that asked for updates, per URI. The SDK cannot tell us when a session ends, so
    # each URI keeps its most recent subscribers only.
    legacy: dict[str, OrderedDict[ServerSession, None]] = {}

    @mcp.resource(
        EVENTS_URI,
        name="project_events",
        title="Project events",
        description="The latest events of a project, oldest first: file changes and their "
        "authors, commands queued/started/finished, VM status, members, locks, settings. "
        "Subscribe to be told when it changes; get_events(since_id) reads increments.",
        mime_type="application/json",
    )
    async def project_events(project_id: str, ctx: Context[AppState]) -> str:
        state, agent = identify(ctx.request_context)
        try:
            result = await state.service.recent_events(agent, project_id, RECENT_EVENTS)
        except NotFound as err:
            raise ResourceNotFoundError(str(err)) from err
        except ProjectVMError as err:
            raise ResourceError(str(err)) from err
        return result.model_dump_json()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        project_id = _project_of(uri)
        if project_id is None:
            raise ResourceNotFoundError(f"{uri} is not a subscribable resource")
        state, agent = identify(ctx)
        try:
            await state.service.authorize(agent, project_id, AccessLevel.READ_ONLY)
        except NotFound as err:
            raise ResourceNotFoundError(str(err)) from err
        subscribers = legacy.setdefault(uri, OrderedDict())
        subscribers[ctx.session] = None
        subscribers.move_to_end(ctx.session)
        while len(subscribers) > MAX_LEGACY_SUBSCRIBERS:
            subscribers.popitem(last=False)
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribers = legacy.get(str(params.uri))
        if subscribers is not None:
            subscribers.pop(ctx.session, None)
        return types.EmptyResult()

    # MCPServer has no public hook for the 2025 protocol's resources/subscribe.
    lowlevel = mcp._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler(
        "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
    )

    async def publish(project_id: str) -> None:
        uri = events_uri(project_id)
        await bus.publish(ResourceUpdated(uri=uri))
        for session in list(legacy.get(uri, ())):
            await session.send_resource_updated(uri)

    return publish
