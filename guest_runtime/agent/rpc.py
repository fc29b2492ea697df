"""Newline-delimited JSON-RPC 2.0 over an asyncio stream pair, multiplexed by request id.

Transports that frame messages themselves (the WebSocket of the HTTP face) skip the line reader
and hand each message to :meth:`Connection.dispatch`.

Every request runs in its own task, so a long ``exec.wait`` never holds up a ``fs.read``.
Lines longer than the limit are discarded and answered with an error instead of being buffered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Set

from .errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    GuestError,
)

Handler = Callable[[Dict[str, Any]], Awaitable[Dict[str, Any]]]

log = logging.getLogger("projectvm.agent")

DEFAULT_MAX_LINE_BYTES = 96 * 1024 * 1024


class Connection:
    """One JSON-RPC peer. ``serve`` reads requests until EOF; ``notify`` pushes notifications."""

    def __init__(
        self,
        reader: Optional[asyncio.StreamReader],
        writer: Any,
        handlers: Dict[str, Handler],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handlers = handlers
        self._max_line_bytes = max_line_bytes
        self._write_lock = asyncio.Lock()
        self._tasks: Set["asyncio.Task[None]"] = set()
        self.closed = False

    async def send(self, message: Dict[str, Any]) -> None:
        if self.closed:
            return
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._write_lock:
            try:
                self._writer.write(line)
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                # The host went away; the read side notices EOF and ends the session.
                self.closed = True

    async def notify(self, method: str, params: Dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def serve(self) -> None:
        """Answer requests until the stream ends."""
        try:
            while True:
                line = await self._read_line()
                if line is None:
                    break
                self.dispatch(line)
        finally:
            self.abort()

    def dispatch(self, line: bytes) -> None:
        """Answer one request line in its own task (for transports that frame messages)."""
        if line.strip():
            self._spawn(self._handle_line(line))

    def abort(self) -> None:
        """The peer is gone: nobody is left to read the answers still being computed."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_line(self) -> Optional[bytes]:
        assert self._reader is not None, "a connection without a reader is fed by dispatch()"
        discarding = False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                return None if discarding or not eof.partial else eof.partial
            except asyncio.LimitOverrunError as over:
                # Drop what is buffered and keep dropping until the line ends.
                await self._reader.readexactly(over.consumed)
                if not discarding:
                    discarding = True
                    self._spawn(
                        self._send_error(
                            None,
                            GuestError(
                                "request_too_large",
                                "request line exceeds %d bytes; send smaller pieces"
                                % self._max_line_bytes,
                            ),
                            INVALID_REQUEST,
                        )
                    )
                continue
            if discarding:
                discarding = False
                continue
            return line

    async def _handle_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            await self._send_error(None, GuestError("parse_error", "invalid JSON"), PARSE_ERROR)
            return
        if not isinstance(message, dict):
            await self._send_error(
                None,
                GuestError("invalid_request", "batches and non-object messages are not supported"),
                INVALID_REQUEST,
            )
            return
        request_id = message.get("id")
        method = message.get("method")
        params = message.get("params", {})
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            await self._send_error(
                request_id,
                GuestError("invalid_request", "expected a JSON-RPC 2.0 request with a method"),
                INVALID_REQUEST,
            )
            return
        if not isinstance(params, dict):
            await self._send_error(
                request_id,
                GuestError("invalid_params", "params must be an object"),
                INVALID_REQUEST,
            )
            return
        handler = self._handlers.get(method)
        if handler is None:
            await self._send_error(
                request_id,
                GuestError("method_not_found", "unknown method %r" % method),
                METHOD_NOT_FOUND,
            )
            return
        try:
            result = await handler(params)
        except GuestError as err:
            await self._send_error(request_id, err, err.code)
            return
        except Exception as exc:  # a bug must not take the agent down
            log.exception("handler %s failed", method)
            await self._send_error(
                request_id,
                GuestError("internal", "%s failed: %s" % (method, exc)),
                INTERNAL_ERROR,
            )
            return
        if "id" in message:
            await self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _send_error(self, request_id: Any, err: GuestError, code: int) -> None:
        error = err.to_json()
        error["code"] = code
        await self.send({"jsonrpc": "2.0", "id": request_id, "error": error})
