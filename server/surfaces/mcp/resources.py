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
from server.core.hub import Publisher
from server.domain.errors import NotFound
from server.domain.operations import Operation
from server.surfaces.mcp.identity import AppState, caller_of

__all__ = ["EVENTS_URI", "project_of", "register_resources"]

EVENTS_URI = "project://{project_id}/events"
PREFIX, SUFFIX = "project://", "/events"
RECENT_EVENTS = 200
MAX_LEGACY_SUBSCRIBERS = 256


def events_uri(project_id: str) -> str:
    return EVENTS_URI.format(project_id=project_id)


def project_of(uri: str) -> str | None:
    if uri.startswith(PREFIX) and uri.endswith(SUFFIX):
        project_id = uri[len(PREFIX) : -len(SUFFIX)]
        return project_id or None
    return None


def register_resources(mcp: MCPServer, bus: InMemorySubscriptionBus) -> Publisher:
    """Register the event feed; returns the publisher to call when a project's feed grows."""
    # Sessions that asked for updates (and the agent each acts as), per URI. The SDK cannot
    # tell us when a session ends, so each URI keeps its most recent subscribers only.
    legacy: dict[str, OrderedDict[ServerSession, tuple[AppState, str]]] = {}

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
        # Reading the feed is the get_events operation, whatever surface asks for it.
        state, caller = caller_of(ctx.request_context, Operation.GET_EVENTS)
        try:
            result = await state.service.feed.recent(caller, project_id, RECENT_EVENTS)
        except NotFound as err:
            raise ResourceNotFoundError(str(err)) from err
        except ProjectVMError as err:
            raise ResourceError(str(err)) from err
        return result.model_dump_json()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        project_id = project_of(uri)
        if project_id is None:
            raise ResourceNotFoundError(f"{uri} is not a subscribable resource")
        state, caller = caller_of(ctx, Operation.GET_EVENTS)
        try:
            await state.service.gate.admit(caller, project_id)
        except NotFound as err:
            raise ResourceNotFoundError(str(err)) from err
        except ProjectVMError as err:
            raise ResourceError(str(err)) from err
        subscribers = legacy.setdefault(uri, OrderedDict())
        subscribers[ctx.session] = (state, caller.agent_id)
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
        subscribers = legacy.get(uri, OrderedDict())
        for session, (state, agent) in list(subscribers.items()):
            # Access is checked again at delivery: a member removed since subscribing hears
            # nothing more, and its subscription ends.
            if await state.service.store.members.level(project_id, agent) is None:
                subscribers.pop(session, None)
                continue
            await session.send_resource_updated(uri)

    return publish
