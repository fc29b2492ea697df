"""A byte stream over a WebSocket client connection, for guest agents reached over the network.

The guest protocol is newline-delimited JSON-RPC; over a WebSocket each line travels as one
message. :class:`WebSocketByteStream` sends every complete outgoing line as one text message
and yields every incoming message's payload followed by a newline, so ``GuestClient`` runs over
it unchanged. The WebSocket is spoken with the sans-IO ``wsproto`` over an anyio TCP (or TLS)
stream; pings are answered, and the closing handshake is done in both directions.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from vm_drivers.errors import GuestUnreachable

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "WebSocketByteStream",
    "WebSocketRejected",
    "connect_websocket",
]

# The guest's largest line (a 64 MiB file read as base64) plus room.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
MAX_REJECTION_BODY = 4096


class WebSocketRejected(GuestUnreachable):
    """The server answered the upgrade with an HTTP status instead of a WebSocket."""

    def __init__(self, url: str, status_code: int, body: str) -> None:
        detail = f": {body}" if body else ""
        super().__init__(f"{url} refused the WebSocket with HTTP {status_code}{detail}")
        self.status_code = status_code
        self.body = body


class WebSocketByteStream(anyio.abc.ByteStream):
    """Lines out as messages, messages in as lines."""

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        connection: WSConnection,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._max_message_bytes = max_message_bytes
        self._send_lock = anyio.Lock()
        self._outgoing = bytearray()
        self._message = bytearray()
        self._ready: deque[bytes] = deque()
        self._peer_closed = False
        self._closed = False

    async def _write(self, event: Event) -> None:
        try:
            data = self._connection.send(event)
        except LocalProtocolError as err:
            raise anyio.BrokenResourceError(f"the WebSocket is closing: {err}") from err
        async with self._send_lock:
            await self._transport.send(data)

    async def send(self, item: bytes) -> None:
        if self._closed or self._peer_closed:
            raise anyio.ClosedResourceError
        self._outgoing += item
        while (end := self._outgoing.find(b"\n")) >= 0:
            line = bytes(self._outgoing[:end])
            del self._outgoing[: end + 1]
            try:
                message: Event = TextMessage(data=line.decode())
            except UnicodeDecodeError:
                message = BytesMessage(data=line)
            await self._write(message)

    async def send_eof(self) -> None:
        """A WebSocket cannot half-close: this starts the closing handshake."""
        await self._close_handshake(1000)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        while not self._ready:
            if self._peer_closed:
                raise anyio.EndOfStream
            try:
                data = await self._transport.receive()
            except anyio.EndOfStream:
                self._peer_closed = True
                raise anyio.BrokenResourceError(
                    "the WebSocket connection dropped without a closing handshake"
                ) from None
            try:
                self._connection.receive_data(data)
            except RemoteProtocolError as err:
                self._peer_closed = True
                raise anyio.BrokenResourceError(f"the peer broke the WebSocket: {err}") from err
            await self._handle_events()
        head = self._ready[0]
        if len(head) <= max_bytes:
            return self._ready.popleft()
        self._ready[0] = head[max_bytes:]
        return head[:max_bytes]

    async def _handle_events(self) -> None:
        for event in self._connection.events():
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data.encode() if isinstance(event, TextMessage) else event.data
                if len(self._message) + len(data) > self._max_message_bytes:
                    await self._close_handshake(1009)
                    raise anyio.BrokenResourceError(
                        f"the peer sent a WebSocket message over {self._max_message_bytes} bytes"
                    )
                self._message += data
                if event.message_finished:
                    self._ready.append(bytes(self._message) + b"\n")
                    self._message.clear()
            elif isinstance(event, Ping):
                await self._write(event.response())
            elif isinstance(event, CloseConnection):
                self._peer_closed = True
                if self._connection.state == ConnectionState.REMOTE_CLOSING:
                    try:
                        await self._write(event.response())
                    except (anyio.BrokenResourceError, OSError):
                        pass

    async def _close_handshake(self, code: int) -> None:
        if self._connection.state == ConnectionState.OPEN:
            try:
                with anyio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._write(CloseConnection(code=code))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._close_handshake(1000)
            await self._transport.aclose()


async def connect_websocket(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connect_to: tuple[str, int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> WebSocketByteStream:
    """Open ``ws://`` or ``wss://`` ``url`` and return it as a line-per-message byte stream.

    ``connect_to`` dials another address than the URL's host (the Host header and the TLS
    server name stay the URL's), like curl's ``--connect-to``. Raises
    :class:`WebSocketRejected` when the server answers with a status, and ``GuestUnreachable``
    when it cannot be reached in ``timeout`` seconds.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r} (expected ws:// or wss://)")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    dial_host, dial_port = connect_to or (parts.hostname, port)
    try:
        with anyio.fail_after(timeout):
            transport: anyio.abc.ByteStream
            if secure:
                transport = await anyio.connect_tcp(
                    dial_host,
                    dial_port,
                    tls=True,
                    ssl_context=ssl_context,
                    tls_hostname=parts.hostname,
                )
            else:
                transport = await anyio.connect_tcp(dial_host, dial_port)
    except (OSError, TimeoutError) as err:
        raise GuestUnreachable(
            f"cannot connect to {dial_host}:{dial_port} for {url}: {err or 'timed out'}"
        ) from err
    try:
        with anyio.fail_after(timeout):
            return await _handshake(
                transport, url, host_header, target, headers or {}, max_message_bytes
            )
    except TimeoutError as err:
        await transport.aclose()
        raise GuestUnreachable(f"{url} did not complete the WebSocket handshake") from err
    except BaseException:
        with anyio.CancelScope(shield=True):
            await transport.aclose()
        raise


async def _handshake(
    transport: anyio.abc.ByteStream,
    url: str,
    host_header: str,
    target: str,
    headers: Mapping[str, str],
    max_message_bytes: int,
) -> WebSocketByteStream:
    connection = WSConnection(ConnectionType.CLIENT)
    extra = [(name.encode(), value.encode()) for name, value in headers.items()]
    await transport.send(
        connection.send(Request(host=host_header, target=target, extra_headers=extra))
    )
    rejected: RejectConnection | None = None
    body = bytearray()
    while True:
        try:
            data = await transport.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as err:
            if rejected is not None:
                break
            raise GuestUnreachable(f"{url} closed the connection during the handshake") from err
        try:
            connection.receive_data(data)
        except RemoteProtocolError as err:
            raise GuestUnreachable(
                f"{url} answered with something that is not HTTP: {err}"
            ) from err
        for event in connection.events():
            if isinstance(event, AcceptConnection):
                stream = WebSocketByteStream(
                    transport, connection, max_message_bytes=max_message_bytes
                )
                # Messages that arrived in the same packet as the handshake answer.
                await stream._handle_events()
                return stream
            if isinstance(event, RejectConnection):
                rejected = event
                if not event.has_body:
                    break
            elif isinstance(event, RejectData):
                body += event.data[: MAX_REJECTION_BODY - len(body)]
                if event.body_finished:
                    assert rejected is not None
                    await transport.aclose()
                    raise WebSocketRejected(
                        url, rejected.status_code, body.decode(errors="replace")
                    )
        if rejected is not None and not rejected.has_body:
            break
    await transport.aclose()
    status = rejected.status_code if rejected is not None else 0
    raise WebSocketRejected(url, status, body.decode(errors="replace"))
