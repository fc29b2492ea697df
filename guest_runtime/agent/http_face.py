"""The agent's HTTP face: ``GET /health`` and the JSON-RPC handlers over a WebSocket at ``/rpc``.

For VMs the host can only reach over the network (Fly Machines behind Fly Proxy). Every request
but ``/health`` needs ``Authorization: Bearer <token>``, compared in constant time; ``/health``
says only that the agent is alive. On ``/rpc`` one WebSocket message (text or binary) carries one
JSON-RPC message, both ways. As with stdio, one session at a time: a newer session closes the
previous one (close code 4000) and the commands started through it are killed; a session that
ends kills its running commands too, while what they left in the background keeps running.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from .rpc import Connection
from .websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_REPLACED,
    WebSocket,
    accept_key,
    valid_client_key,
)

__all__ = ["HttpFace", "parse_listen_address", "read_token"]


MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
MIN_TOKEN_CHARS = 16
DEFAULT_PING_INTERVAL_S = 20.0
CLOSE_GRACE_S = 2.0


def read_token(token_file: Optional[str], token_env: Optional[str]) -> bytes:
    """The bearer token from a file or an environment variable; refuses a missing or weak one."""
    if token_file:
        try:
            with open(token_file, "rb") as handle:
                token = handle.read().strip()
        except OSError as err:
            raise ValueError("cannot read the token file %s: %s" % (token_file, err)) from None
        where = "the file %s" % token_file
    elif token_env:
        # Taken out of the environment: commands inherit it, and `env` must not print it.
        token = os.environ.pop(token_env, "").strip().encode()
        where = "the environment variable %s" % token_env
    else:
        raise ValueError("--http needs --token-file PATH or --token-env NAME")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            "the token in %s is missing or shorter than %d characters; set a long random token"
            % (where, MIN_TOKEN_CHARS)
        )
    return token


def parse_listen_address(text: str) -> Tuple[Optional[str], int]:
    """``HOST:PORT``, ``[::]:PORT`` or ``:PORT`` (every interface); port 0 picks a free one."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("invalid --http address %r: expected HOST:PORT" % text)
    host = host.strip("[]")
    return (host or None), int(port)


class _Request:
    def __init__(self, method: str, target: str, version: str, headers: Dict[str, str]) -> None:
        self.method = method
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers

    def tokens(self, name: str) -> List[str]:
        return [part.strip().lower() for part in self.headers.get(name, "").split(",")]


def _parse_head(data: bytes) -> Optional[_Request]:
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        key = name.lower()
        headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
    return _Request(parts[0], parts[1], parts[2], headers)


class _MessageWriter:
    """What :class:`Connection` writes lines to: each line leaves as one WebSocket message."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                return
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            await self._websocket.send_text(line)


class _Session:
    def __init__(self, websocket: WebSocket, connection: Connection) -> None:
        self.websocket = websocket
        self.connection = connection


class HttpFace:
    """Serves one agent over HTTP until the agent is told to stop."""

    def __init__(
        self,
        agent: Any,
        token: bytes,
        max_message_bytes: int,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
    ) -> None:
        self.agent = agent
        self._token = token
        self._max_message_bytes = max_message_bytes
        self._ping_interval_s = ping_interval_s
        self._session: Optional[_Session] = None
        self._connections: Dict[Any, "asyncio.Task[Any]"] = {}  # writer -> its task

    async def serve(self, host: Optional[str], port: int) -> None:
        server = await asyncio.start_server(self._on_connection, host, port, limit=MAX_HEAD_BYTES)
        bound = server.sockets[0].getsockname() if server.sockets else (host, port)
        # Tells whoever started us (with port 0, say) where we listen; stderr is the agent's log.
        sys.stderr.write("projectvm-agent: serving HTTP on %s:%d\n" % (bound[0], bound[1]))
        sys.stderr.flush()
        try:
            await self.agent.stopping.wait()
        finally:
            server.close()
            if self._session is not None:
                await self._end_session(self._session, CLOSE_GOING_AWAY, "the agent is stopping")
            # Closed rather than cancelled (asyncio logs cancelled connection tasks as errors),
            # then given a moment to notice.
            for writer in list(self._connections):
                writer.close()
            if self._connections:
                await asyncio.wait(list(self._connections.values()), timeout=CLOSE_GRACE_S)
            self.agent.end_session()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[writer] = task
        try:
            await self._handle(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: Any) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, {"error": "request headers are too large"})
            return
        except asyncio.TimeoutError:
            return
        request = _parse_head(head)
        if request is None:
            await _respond(writer, 400, {"error": "malformed HTTP request"})
            return
        if request.path == "/health":
            if request.method != "GET":
                await _respond(writer, 405, {"error": "use GET /health"}, {"Allow": "GET"})
                return
            await _respond(writer, 200, {"status": "ok"})
            return
        if not self._authorized(request):
            await _respond(
                writer,
                401,
                {"error": "missing or wrong bearer token; send Authorization: Bearer <token>"},
                {"WWW-Authenticate": 'Bearer realm="projectvm-agent"'},
            )
            return
        if request.path != "/rpc":
            await _respond(writer, 404, {"error": "no such endpoint; the protocol is at /rpc"})
            return
        if request.method != "GET":
            await _respond(writer, 405, {"error": "open /rpc with GET"}, {"Allow": "GET"})
            return
        refusal = _handshake_refusal(request)
        if refusal is not None:
            status, message, extra = refusal
            await _respond(writer, status, {"error": message}, extra)
            return
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: %s\r\n\r\n"
                % accept_key(request.headers["sec-websocket-key"])
            ).encode("ascii")
        )
        await writer.drain()
        await self._run_session(WebSocket(reader, writer, self._max_message_bytes))

    def _authorized(self, request: _Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip().encode("latin-1", "replace")
        # Compared even when the scheme is wrong, so timing says nothing about the token.
        matches = hmac.compare_digest(given, self._token)
        return matches and scheme.lower() == "bearer"

    async def _run_session(self, websocket: WebSocket) -> None:
        previous = self._session
        if previous is not None:
            await self._end_session(previous, CLOSE_REPLACED, "replaced by a newer session")
        connection = Connection(
            None, _MessageWriter(websocket), self.agent.handlers, self._max_message_bytes
        )
        session = _Session(websocket, connection)
        self._session = session
        self.agent.connection = connection
        pinger = asyncio.ensure_future(self._keep_alive(websocket))
        try:
            while True:
                message = await websocket.receive()
                if message is None:
                    break
                connection.dispatch(message)
        finally:
            pinger.cancel()
            if self._session is session:
                await self._end_session(session, CLOSE_GOING_AWAY, "session over")

    async def _end_session(self, session: _Session, code: int, reason: str) -> None:
        """Close a session; commands started through it are killed (the channel contract)."""
        if self._session is session:
            self._session = None
            self.agent.connection = None
        session.connection.abort()
        self.agent.end_session()
        await session.websocket.close(code, reason)

    async def _keep_alive(self, websocket: WebSocket) -> None:
        """Pings keep proxies between host and guest from closing a quiet session."""
        if self._ping_interval_s <= 0:
            return
        while not websocket.closed:
            await asyncio.sleep(self._ping_interval_s)
            try:
                await websocket.ping(b"keepalive")
            except (ConnectionError, RuntimeError, OSError):
                return


def _handshake_refusal(request: _Request) -> Optional[Tuple[int, str, Dict[str, str]]]:
    if "websocket" not in request.tokens("upgrade") or "upgrade" not in request.tokens(
        "connection"
    ):
        return 426, "/rpc speaks WebSocket: send Upgrade: websocket", {"Upgrade": "websocket"}
    if request.headers.get("sec-websocket-version", "").strip() != "13":
        return 426, "WebSocket version 13 is required", {"Sec-WebSocket-Version": "13"}
    if not valid_client_key(request.headers.get("sec-websocket-key", "")):
        return 400, "Sec-WebSocket-Key must be the base64 of 16 bytes", {}
    return None


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


async def _respond(
    writer: Any, status: int, body: Dict[str, Any], extra: Optional[Dict[str, str]] = None
) -> None:
    data = json.dumps(body).encode()
    lines = [
        "HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error")),
        "Content-Type: application/json",
        "Content-Length: %d" % len(data),
        "Connection: close",
    ]
    lines += ["%s: %s" % item for item in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
    await writer.drain()
