"""Start the guest agent's HTTP face as a subprocess, and speak raw WebSocket frames to it."""

from __future__ import annotations

import base64
import os
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from guest_runtime.bundle import write_agent_zipapp

TOKEN = "test-token-" + "k" * 24
_LISTENING = re.compile(rb"serving HTTP on ([0-9.]+):(\d+)")


@dataclass
class HttpAgent:
    process: Process
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc"


@asynccontextmanager
async def http_agent(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None, python: str = sys.executable
) -> AsyncIterator[HttpAgent]:
    """The agent serving ``--http 127.0.0.1:0``, its token in a file unless ``extra`` says."""
    root = tmp_path / "workspace"
    root.mkdir(exist_ok=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    zipapp = write_agent_zipapp(tmp_path / "agent")
    token_args = [] if any(a.startswith("--token") for a in extra) else ["--token-file"]
    argv = [python, str(zipapp), "--root", str(root), "--http", "127.0.0.1:0"]
    argv += [*token_args, str(token_file)] if token_args else []
    argv += list(extra)
    process = await anyio.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stderr is not None
        log = BufferedByteReceiveStream(process.stderr)
        with anyio.fail_after(20):
            while True:
                line = await log.receive_until(b"\n", 65536)
                match = _LISTENING.search(line)
                if match:
                    break
        async with anyio.create_task_group() as group:
            # Keep reading its log, so a chatty agent never blocks on a full pipe.
            group.start_soon(_drain, log)
            yield HttpAgent(process, root, int(match.group(2)))
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


async def _drain(log: BufferedByteReceiveStream) -> None:
    try:
        while True:
            await log.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def http_exchange(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send one raw HTTP request; return the status, the head and the body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(10):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


def upgrade_request(token: str | None = TOKEN, *, version: str = "13", path: str = "/rpc") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: agent",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame, built by hand."""
    header = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        header.append(mask_bit | len(payload))
    elif len(payload) < 1 << 16:
        header.append(mask_bit | 126)
        header += struct.pack(">H", len(payload))
    else:
        header.append(mask_bit | 127)
        header += struct.pack(">Q", len(payload))
    if not masked:
        return bytes(header) + payload
    mask = os.urandom(4)
    return bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket client with no opinions, to test the server's handling of every frame."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[RawWebSocket]:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            websocket = cls(stream)
            await stream.send(upgrade_request())
            with anyio.fail_after(10):
                head = await websocket.reader.receive_until(b"\r\n\r\n", 65536)
            assert head.startswith(b"HTTP/1.1 101"), head
            yield websocket

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive_frame(self) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); server frames are never masked."""
        with anyio.fail_after(10):
            first, second = await self.reader.receive_exactly(2)
            assert not second & 0x80, "server frames must not be masked"
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack(">H", await self.reader.receive_exactly(2))
            elif size == 127:
                (size,) = struct.unpack(">Q", await self.reader.receive_exactly(8))
            payload = await self.reader.receive_exactly(size) if size else b""
        return first & 0x0F, payload

    async def receive_data_frame(self) -> tuple[int, bytes]:
        """The next frame that is not a keep-alive ping."""
        while True:
            opcode, payload = await self.receive_frame()
            if opcode != 0x9:
                return opcode, payload

    async def receive_close(self) -> int:
        opcode, payload = await self.receive_data_frame()
        assert opcode == 0x8, (opcode, payload)
        return int(struct.unpack(">H", payload[:2])[0])
