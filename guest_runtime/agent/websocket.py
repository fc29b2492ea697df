"""The server side of RFC 6455 WebSockets over an asyncio stream pair, by hand (stdlib only).

Covers what a JSON-RPC peer needs: the opening handshake's accept key, masked client frames,
fragmented messages with control frames between the fragments, ping/pong, the closing
handshake, a cap on the size of one message, and UTF-8 checks on text. No extensions
(compression) are negotiated, so every reserved bit must be zero.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from typing import Any, Optional, Tuple

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REPLACED",
    "CLOSE_TOO_BIG",
    "WebSocket",
    "accept_key",
    "valid_client_key",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
# Application range (4000-4999): a newer session took over this agent (the channel contract).
CLOSE_REPLACED = 4000

# Close codes a peer may send (RFC 6455 section 7.4); 1005, 1006 and 1015 never travel.
_VALID_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def accept_key(client_key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(client_key.strip().encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(client_key: str) -> bool:
    """A key is the base64 of 16 random bytes."""
    try:
        return len(base64.b64decode(client_key.strip(), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


class ProtocolViolation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WebSocket:
    """One accepted WebSocket session: whole messages in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any, max_message_bytes: int) -> None:
        self._reader = reader
        self._writer = writer
        self._max_message_bytes = max_message_bytes
        self._write_lock = asyncio.Lock()
        self.closed = False
        self.close_code: Optional[int] = None

    # -- sending ------------------------------------------------------------------------------

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header.append(size)
        elif size < 1 << 16:
            header.append(126)
            header += struct.pack(">H", size)
        else:
            header.append(127)
            header += struct.pack(">Q", size)
        async with self._write_lock:
            if self._writer.is_closing():
                raise ConnectionResetError("the WebSocket connection is closed")
            self._writer.write(bytes(header) + payload)
            await self._writer.drain()

    async def send_text(self, payload: bytes) -> None:
        """Send one message of UTF-8 text (already encoded)."""
        await self._send_frame(OP_TEXT, payload)

    async def ping(self, payload: bytes = b"") -> None:
        await self._send_frame(OP_PING, payload[:125])

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame (once) and end the connection."""
        if not self.closed:
            self.closed = True
            self.close_code = code
            try:
                await self._send_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:120])
            except (ConnectionError, RuntimeError, OSError):
                pass
        self._writer.close()

    # -- receiving ----------------------------------------------------------------------------

    async def _read_frame(self) -> Tuple[bool, int, bytes]:
        first, second = await self._reader.readexactly(2)
        fin = bool(first & 0x80)
        if first & 0x70:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension)")
        opcode = first & 0x0F
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "unknown opcode %d" % opcode)
        if not second & 0x80:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        size = second & 0x7F
        if opcode in CONTROL_OPCODES and (size > 125 or not fin):
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "control frames are short and whole")
        if size == 126:
            (size,) = struct.unpack(">H", await self._reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack(">Q", await self._reader.readexactly(8))
            if size >> 63:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "frame length out of range")
        if size > self._max_message_bytes:
            raise ProtocolViolation(
                CLOSE_TOO_BIG, "message over %d bytes" % self._max_message_bytes
            )
        mask = await self._reader.readexactly(4)
        payload = await self._reader.readexactly(size)
        return fin, opcode, _unmask(payload, mask)

    async def receive(self) -> Optional[bytes]:
        """The next whole data message, or None once the session is over (after closing it)."""
        try:
            return await self._receive()
        except ProtocolViolation as violation:
            await self.close(violation.code, violation.reason)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.closed = True
            self._writer.close()
        return None

    async def _receive(self) -> Optional[bytes]:
        message = bytearray()
        message_opcode: Optional[int] = None
        while not self.closed:
            fin, opcode, payload = await self._read_frame()
            if opcode == OP_PING:
                await self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                await self.close(*_close_reply(payload))
                return None
            if opcode == OP_CONTINUATION:
                if message_opcode is None:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation of nothing")
            elif message_opcode is not None:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            else:
                message_opcode = opcode
            if len(message) + len(payload) > self._max_message_bytes:
                raise ProtocolViolation(
                    CLOSE_TOO_BIG, "message over %d bytes" % self._max_message_bytes
                )
            message += payload
            if fin:
                if message_opcode == OP_TEXT:
                    try:
                        message.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolViolation(
                            CLOSE_INVALID_DATA, "text message is not UTF-8"
                        ) from None
                return bytes(message)
        return None


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    # XOR as one big integer: fast in pure Python, even for multi-megabyte messages.
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    number = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return number.to_bytes(len(payload), "big")


def _close_reply(payload: bytes) -> Tuple[int, str]:
    """The code to answer a peer's close frame with (echo its code, per RFC 6455 5.5.1)."""
    if not payload:
        return CLOSE_NORMAL, ""
    if len(payload) == 1:
        return CLOSE_PROTOCOL_ERROR, "a close payload has a two-byte code"
    (code,) = struct.unpack(">H", payload[:2])
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        return CLOSE_PROTOCOL_ERROR, "invalid close code %d" % code
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_PROTOCOL_ERROR, "close reason is not UTF-8"
    return code, ""
