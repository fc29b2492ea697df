"""Every open HTTP connection, watched: slow, idle and surplus connections are closed.

uvicorn has no deadline for a request's headers or body and no cap on open connections, so a
client that opens connections and sends requests a byte at a time (or not at all) keeps them
forever, until the process runs out of file descriptors and cannot accept anyone else. Here
each connection is in one phase of its current request, and each phase but serving has a
deadline (the numbers are ``Limits``' ``http_*`` settings):

- ``AWAITING``: its request line and headers have not all arrived. They must, within
  ``http_request_header_timeout_s`` of the request's first byte (of the connection's opening,
  for a first request).
- ``BODY``: the headers are in, the body is arriving. While the app waits for it, each
  ``http_request_body_timeout_s`` must bring ``http_min_body_bytes_per_s`` times as many bytes:
  a large upload at a fair rate always finishes, a trickle does not, and nor does a body sent
  fast and then left half-sent (measured since the start, that once bought minutes: 40 MB
  parked 41 minutes). Time the app spends with what it read (writing a piece to the VM) does
  not count.
- ``SERVING``: the request is with the app (a tool call, an event stream): no deadline.
- ``IDLE``: answered, kept alive for the next request for ``http_keep_alive_timeout_s``.

And in any phase, a connection the server cannot write to (the client does not read what it
was sent: its socket buffers are full) is closed once that has lasted
``http_request_body_timeout_s``: a download, an event stream or an answer nobody reads would
otherwise hold its memory for as long as the client keeps the socket open.

And at most ``http_max_connections`` are open: a new connection past the cap closes the one that
has waited longest without completing its request (else the longest idle one), so a new client
always gets in unless every connection is being served.

The guard sees connections through ``GuardedProtocol`` (wrapping uvicorn's own protocol: bytes
in, opened, lost) and requests through ``watch()``, an ASGI middleware that finds its connection
in the request's state, where the protocol put it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ConnectionGuard",
    "ConnectionLimits",
    "Phase",
    "TrackedConnection",
    "abort_connection",
]

log = logging.getLogger("projectvm.http")

# Where the protocol leaves a request's connection, in the request's (ASGI) state.
CONNECTION_STATE_KEY = "projectvm.connection"


def abort_connection(scope: Scope) -> bool:
    """Close a request's connection at once, dropping whatever is unsent (for a WebSocket whose
    client stopped reading); False when the request came without a watched connection."""
    connection = (scope.get("state") or {}).get(CONNECTION_STATE_KEY)
    transport = connection.transport if isinstance(connection, TrackedConnection) else None
    if transport is None:
        return False
    transport.abort()
    return True


class Phase(enum.Enum):
    AWAITING = "awaiting"
    BODY = "body"
    SERVING = "serving"
    IDLE = "idle"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    min_body_bytes_per_s: int
    keep_alive_timeout_s: float
    max_connections: int
    # How long the server may be unable to write to a connection before closing it.
    send_timeout_s: float = 15.0
    # How many connections asyncio accepts in one go (uvicorn's "backlog") before any of them
    # reaches the guard. Small, so that a burst can neither run the process out of descriptors
    # nor close a new connection (as surplus) before its first bytes are read.
    accept_batch: int = 64


@dataclass(eq=False)
class TrackedConnection:
    """One connection and the phase of its current request."""

    opened_at: float
    transport: asyncio.Transport | None = None
    phase: Phase = Phase.AWAITING
    since: float = 0.0  # when the current phase began
    received: int = 0  # bytes received over the connection's life
    received_at_headers: int = 0
    # The body's current window: since when, and how many bytes it brought so far.
    window_start: float = 0.0
    window_bytes: int = 0
    app_busy_since: float | None = None  # the app is not waiting for the body (since when)
    completed: int = 0  # requests answered
    tail: bytes = b""  # the last bytes received while awaiting headers (their end may straddle)
    write_blocked_since: float | None = None  # since when the client has not read our writes

    def __post_init__(self) -> None:
        self.since = self.opened_at

    def deadline(self, limits: ConnectionLimits, now: float) -> float | None:
        if self.write_blocked_since is not None:
            return self.write_blocked_since + limits.send_timeout_s
        if self.phase is Phase.AWAITING:
            return self.since + limits.header_timeout_s
        if self.phase is Phase.BODY:
            busy = now - self.app_busy_since if self.app_busy_since is not None else 0.0
            return self.window_start + busy + limits.body_timeout_s
        if self.phase is Phase.IDLE:
            return self.since + limits.keep_alive_timeout_s
        return None


@dataclass
class ConnectionGuard:
    limits: ConnectionLimits
    clock: Callable[[], float] = time.monotonic
    open: set[TrackedConnection] = field(default_factory=set)
    closed_slow: int = 0  # connections closed at a deadline
    closed_surplus: int = 0  # connections closed to make room (or refused: nothing to close)
    # The waiting (AWAITING, BODY) and the idle connections, each in the order they entered
    # that phase: the first is the one to close for room, found at once even under a flood.
    _waiting: dict[TrackedConnection, None] = field(default_factory=dict)
    _idle: dict[TrackedConnection, None] = field(default_factory=dict)

    # --- what the protocol reports -----------------------------------------------------------

    def opened(self, connection: TrackedConnection, transport: asyncio.Transport) -> None:
        connection.transport = transport
        self.open.add(connection)
        self._waiting[connection] = None
        if len(self.open) > self.limits.max_connections:
            self._forget_closed()
        if len(self.open) > self.limits.max_connections:
            victim = self._surplus(excluding=connection) or connection
            self.closed_surplus += 1
            if self.closed_surplus == 1 or self.closed_surplus % 1000 == 0:
                log.warning(
                    "%d HTTP connections are open, the most allowed (http_max_connections): "
                    "closing the ones that wait longest without completing a request "
                    "(%d so far)",
                    len(self.open) - 1,
                    self.closed_surplus,
                )
            self._close(victim, abort=True)

    def received(self, connection: TrackedConnection, data: bytes) -> None:
        connection.received += len(data)
        if connection.phase is Phase.BODY:
            connection.window_bytes += len(data)
            if connection.window_bytes >= self._window_quota:  # enough: a new window
                connection.window_start, connection.window_bytes = self.clock(), 0
                if connection.app_busy_since is not None:
                    connection.app_busy_since = connection.window_start
        if connection.phase is Phase.IDLE:  # the next request begins
            self._enter(connection, Phase.AWAITING)
            connection.tail = b""
        if connection.phase is Phase.AWAITING:
            # The blank line that ends a request's head: its headers are in. Seen here, before
            # uvicorn hands the request to the app, so a new client is no longer "waiting"
            # (surplus) a moment sooner; the app's middleware then sets the exact phase.
            seen = connection.tail + data
            if b"\r\n\r\n" in seen:
                self.headers_complete(connection, has_body=True)
            connection.tail = seen[-3:]

    def lost(self, connection: TrackedConnection) -> None:
        self._forget(connection)

    def write_blocked(self, connection: TrackedConnection, blocked: bool) -> None:
        """The transport's buffer is full (the client is not reading), or drained again."""
        connection.write_blocked_since = self.clock() if blocked else None

    def ended(self, connection: TrackedConnection) -> None:
        """A WebSocket's app returned: the connection is closing (its protocol is no longer
        the one that would report it lost), so it no longer counts."""
        self._forget(connection)

    # --- what the ASGI middleware reports ---------------------------------------------------

    def headers_complete(self, connection: TrackedConnection, has_body: bool) -> None:
        connection.received_at_headers = connection.received
        self._enter(connection, Phase.BODY if has_body else Phase.SERVING)
        connection.window_start, connection.window_bytes = connection.since, 0
        connection.app_busy_since = None

    @property
    def _window_quota(self) -> float:
        return self.limits.min_body_bytes_per_s * self.limits.body_timeout_s

    def body_wanted(self, connection: TrackedConnection, wanted: bool) -> None:
        """The app waits for more of the body, or has it and works with it; the time it works
        is added to the body's deadline."""
        now = self.clock()
        if wanted and connection.app_busy_since is not None:
            connection.window_start += now - connection.app_busy_since
            connection.app_busy_since = None
        elif not wanted and connection.app_busy_since is None:
            connection.app_busy_since = now

    def body_complete(self, connection: TrackedConnection) -> None:
        if connection.phase is Phase.BODY:
            self._enter(connection, Phase.SERVING)

    def response_complete(self, connection: TrackedConnection) -> None:
        connection.completed += 1
        self._enter(connection, Phase.IDLE)

    # --- enforcement -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Close every connection past its phase's deadline (and forget closed ones)."""
        now = self.clock()
        for connection in list(self.open):
            transport = connection.transport
            blocked = connection.write_blocked_since is not None
            if transport is None or (transport.is_closing() and not blocked):
                # Handed to another protocol (a WebSocket) or closed: no longer ours to watch.
                # (Closed with data its client does not read, it waits for its deadline.)
                self._forget(connection)
                continue
            deadline = connection.deadline(self.limits, now)
            if deadline is not None and now >= deadline:
                self.closed_slow += 1
                self._close(connection, abort=blocked or connection.phase is not Phase.IDLE)

    async def sweep_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await anyio.sleep(interval_s)
            self.sweep()

    def watch(self, app: ASGIApp) -> ASGIApp:
        """``app`` with each request's phases reported to this guard."""
        return _PhaseReporter(app, self)

    def protocol_class(self, inner: Callable[..., asyncio.Protocol]) -> type[asyncio.Protocol]:
        """A protocol class for uvicorn (``Config(http=...)``) that wraps ``inner``'s."""

        class GuardedHTTPProtocol(GuardedProtocol):
            pass

        GuardedHTTPProtocol.guard = self
        GuardedHTTPProtocol.inner = inner
        return GuardedHTTPProtocol

    def _enter(self, connection: TrackedConnection, phase: Phase) -> None:
        connection.phase = phase
        connection.since = self.clock()
        self._waiting.pop(connection, None)
        self._idle.pop(connection, None)
        if connection not in self.open:
            return
        if phase in (Phase.AWAITING, Phase.BODY):
            self._waiting[connection] = None
        elif phase is Phase.IDLE:
            self._idle[connection] = None

    def _surplus(self, excluding: TrackedConnection) -> TrackedConnection | None:
        """The connection to close for room: the one waiting longest on an incomplete request,
        else the one idle longest; never one being served."""
        for candidates in (self._waiting, self._idle):
            for connection in candidates:
                if connection is not excluding:
                    return connection
        return None

    def _forget_closed(self) -> None:
        """Forget connections closed since the last sweep (WebSockets, which another protocol
        serves): they must not count against the cap, or newcomers are refused for them."""
        for connection in list(self.open):
            transport = connection.transport
            if transport is not None and transport.is_closing():
                if connection.write_blocked_since is not None:
                    transport.abort()  # closed, but its client reads nothing it was sent
                self._forget(connection)

    def _forget(self, connection: TrackedConnection) -> None:
        self.open.discard(connection)
        self._waiting.pop(connection, None)
        self._idle.pop(connection, None)

    def _close(self, connection: TrackedConnection, *, abort: bool) -> None:
        self._forget(connection)
        transport = connection.transport
        # Aborting frees the descriptor now, whatever a client that does not read left unsent
        # (also once closing: a close waits for that); an idle connection closes politely.
        if transport is not None and abort:
            transport.abort()
        elif transport is not None and not transport.is_closing():
            transport.close()


class GuardedProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol for one connection, with the connection reported to a guard."""

    guard: ClassVar[ConnectionGuard]
    inner: ClassVar[Callable[..., asyncio.Protocol]]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.connection = TrackedConnection(opened_at=self.guard.clock())
        # uvicorn copies app_state into every request's scope["state"]: the way to find the
        # connection from the request.
        state = {**app_state, CONNECTION_STATE_KEY: self.connection}
        self.protocol = type(self).inner(
            config=config, server_state=server_state, app_state=state, _loop=_loop
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        self.guard.opened(self.connection, transport)

    def data_received(self, data: bytes) -> None:
        self.guard.received(self.connection, data)
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.lost(self.connection)
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.guard.write_blocked(self.connection, True)
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.guard.write_blocked(self.connection, False)
        self.protocol.resume_writing()


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bool(value.strip() not in (b"", b"0"))
        if name == b"transfer-encoding":
            return True
    return False


class _PhaseReporter:
    """ASGI middleware: tells the guard when a request's headers, body and response are done."""

    def __init__(self, app: ASGIApp, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: MutableMapping[str, Any] = scope.get("state") or {}
        connection = state.get(CONNECTION_STATE_KEY)
        if not isinstance(connection, TrackedConnection):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a WebSocket: served for as long as it lasts
            self.guard.headers_complete(connection, has_body=False)
            try:
                await self.app(scope, receive, send)
            finally:  # refused or closed: the connection ends with it
                self.guard.ended(connection)
            return
        guard = self.guard
        guard.headers_complete(connection, _has_body(scope))

        async def reporting_receive() -> Message:
            guard.body_wanted(connection, True)
            try:
                message = await receive()
            finally:
                guard.body_wanted(connection, False)
            if message["type"] == "http.request" and not message.get("more_body", False):
                guard.body_complete(connection)
            return message

        answered = False

        async def reporting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                guard.body_complete(connection)  # answered before reading it all (401, 413)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
                guard.response_complete(connection)

        try:
            await self.app(scope, reporting_receive, reporting_send)
        finally:
            if not answered:  # it failed (uvicorn answers 500) or the client went away
                guard.response_complete(connection)
