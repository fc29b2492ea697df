"""MCP resources: a project's event feed at ``project://{project_id}/events``, with updates.

Clients of the current protocol follow it with ``subscriptions/listen``; clients of the
2025 protocol with ``resources/subscribe``, which the SDK's ``MCPServer`` leaves to the server,
so it is registered here on the low-level server. Either way a subscriber is told *that* the
feed changed and reads it (with its own access checked) to see *what* changed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio.lowlevel
import mcp.types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourceUpdated, ServerEvent

from guest_runtime.errors import ProjectVMError
from server.core.caller import Caller
from server.core.hub import Publisher
from server.domain.errors import NotFound
from server.domain.operations import Operation
from server.surfaces.mcp.identity import AppState, caller_of

__all__ = [
    "EVENTS_URI",
    "LISTENING_AS",
    "CheckedSubscriptionBus",
    "project_of",
    "register_resources",
]

log = logging.getLogger("projectvm.resources")

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


def connection_of(session: ServerSession) -> object:
    """What stays the same across one client session's requests (the SDK builds a new
    ServerSession for each request; the connection beneath is the session's own)."""
    return getattr(session, "_connection", session)


async def may_read_events(state: AppState, agent_id: str, project_id: str) -> bool:
    """Whether ``agent_id`` may read the project's feed now (checked again at every delivery:
    a member removed, or a project that excluded get_events since, hears nothing more)."""
    caller = Caller(agent_id, state.transport, Operation.GET_EVENTS)
    try:
        await state.service.gate.policy.admit(caller, project_id)
    except ProjectVMError:
        return False
    return True


Listener = Callable[[ServerEvent], None]

# Set by the listen guard while the SDK's listen handler subscribes: who the new listener is.
LISTENING_AS: ContextVar[tuple[AppState, str] | None] = ContextVar(
    "projectvm_listening_as", default=None
)


class CheckedSubscriptionBus:
    """The ``subscriptions/listen`` fan-out (the SDK's SubscriptionBus seam), which delivers a
    project's feed updates only to listeners whose agent may read that feed at that moment."""

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[Listener, tuple[AppState, str] | None]] = {}

    async def publish(self, event: ServerEvent) -> None:
        project_id = project_of(event.uri) if isinstance(event, ResourceUpdated) else None
        verdicts: dict[str, bool] = {}
        for listener, who in list(self._listeners.values()):
            if project_id is not None:
                if who is None:
                    continue  # a listener of unknown identity hears no project's feed
                state, agent = who
                if agent not in verdicts:
                    verdicts[agent] = await may_read_events(state, agent, project_id)
                if not verdicts[agent]:
                    continue
            try:
                listener(event)
            except Exception:  # one broken stream must not starve the others
                log.exception("a subscription listener failed; continuing")
        await anyio.lowlevel.checkpoint()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (listener, LISTENING_AS.get())

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe


def register_resources(mcp: MCPServer, bus: CheckedSubscriptionBus) -> Publisher:
    """Register the event feed; returns the publisher to call when a project's feed grows."""
    # Sessions that asked for updates (and the agent each acts as), per URI. The SDK cannot
    # tell us when a session ends, so each URI keeps its most recent subscribers only.
    # Keyed by the session's connection: the SDK makes a ServerSession per request.
    legacy: dict[str, OrderedDict[object, tuple[ServerSession, AppState, str]]] = {}

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
        key = connection_of(ctx.session)
        subscribers[key] = (ctx.session, state, caller.agent_id)
        subscribers.move_to_end(key)
        while len(subscribers) > MAX_LEGACY_SUBSCRIBERS:
            subscribers.popitem(last=False)
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribers = legacy.get(str(params.uri))
        if subscribers is not None:
            subscribers.pop(connection_of(ctx.session), None)
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
        for key, (session, state, agent) in list(subscribers.items()):
            # Access is checked again at delivery: a member removed since subscribing hears
            # nothing more, and its subscription ends.
            if not await may_read_events(state, agent, project_id):
                subscribers.pop(key, None)
                continue
            await session.send_resource_updated(uri)

    return publish
