"""Byte streams to a guest agent, whatever carries them.

- :class:`ProcessStream`: a child process's stdin and stdout (``process``, ``lima``);
- :class:`ProcessSocketStream`: sockets handed to a child process on descriptors of their own
  (``local``: not on the stdio that every process of the sandbox can reach);
- :class:`MultiplexedStream`: an attach connection whose output is framed as
  ``[stream, 0, 0, 0, size:u32be] payload`` (the Docker Engine API without a TTY);
- :func:`connect_unix`: a unix socket (QEMU's chardev, Firecracker's vsock muxer);
- :class:`PrefixedStream`: a stream with bytes already read in front of it — what is left after
  a handshake (vsock ``CONNECT``/``OK``, an HTTP upgrade) read more than its reply;
- :func:`line_handshake`: send one line, read one line back, keep the rest.
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.abc import Process

__all__ = [
    "MultiplexedStream",
    "PrefixedStream",
    "ProcessSocketStream",
    "ProcessStream",
    "connect_unix",
    "line_handshake",
    "terminate",
]

STOP_GRACE_S = 5.0


async def terminate(process: Process, grace_s: float = STOP_GRACE_S) -> None:
    """End a child: close its stdin (a guest agent then kills its commands and exits), wait a
    little, then kill it."""
    with anyio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(grace_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


class ProcessStream(anyio.abc.ByteStream):
    """A process's stdio as one byte stream; closing the stream ends the process.

    If the process exits abnormally, the read that finds its output closed fails with
    ``BrokenResourceError`` carrying ``why()`` (e.g. the tail of its log).
    """

    def __init__(self, process: Process, why: Callable[[], str] = lambda: "") -> None:
        if process.stdin is None or process.stdout is None:
            raise ValueError("the process needs piped stdin and stdout")
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._why = why

    async def send(self, item: bytes) -> None:
        await self._stdin.send(item)

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stdout.receive(max_bytes)
        except anyio.EndOfStream:
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            code = self.process.returncode
            if code not in (0, None, -signal.SIGKILL, -signal.SIGTERM):
                raise anyio.BrokenResourceError(
                    f"the guest process exited with status {code}: {self._why()}"
                ) from None
            raise

    async def aclose(self) -> None:
        await terminate(self.process)


class ProcessSocketStream(anyio.abc.ByteStream):
    """A child's channel on sockets; closing the stream closes them (a guest agent then kills
    its commands and exits), waits a little for the child, then kills it.

    If the child exits abnormally, the read that finds the socket closed fails with
    ``BrokenResourceError`` carrying ``why()``.
    """

    def __init__(
        self,
        process: Process,
        channel: anyio.abc.ByteStream,
        why: Callable[[], str] = lambda: "",
    ) -> None:
        self.process = process
        self._channel = channel
        self._why = why

    async def send(self, item: bytes) -> None:
        await self._channel.send(item)

    async def send_eof(self) -> None:
        await self._channel.send_eof()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._channel.receive(max_bytes)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            code = self.process.returncode
            if code not in (0, None, -signal.SIGKILL, -signal.SIGTERM):
                raise anyio.BrokenResourceError(
                    f"the guest process exited with status {code}: {self._why()}"
                ) from None
            raise anyio.EndOfStream from None

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._channel.aclose()
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


class MultiplexedStream(anyio.abc.ByteStream):
    """Stdout frames are the protocol; stderr frames are the agent's log, kept for diagnosis."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.stderr_tail = b""

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            try:
                self._buffer += await self._stream.receive()
            except anyio.EndOfStream:
                return False
        return True

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if not await self._fill(8):
                raise anyio.EndOfStream
            kind, size = self._buffer[0], struct.unpack(">I", self._buffer[4:8])[0]
            if not await self._fill(8 + size):
                raise anyio.EndOfStream
            payload = bytes(self._buffer[8 : 8 + size])
            del self._buffer[: 8 + size]
            if kind == 2:
                self.stderr_tail = (self.stderr_tail + payload)[-4096:]
                continue
            if payload:
                return payload

    async def aclose(self) -> None:
        await self._stream.aclose()


async def connect_unix(path: str) -> anyio.abc.SocketStream:
    return await anyio.connect_unix(path)


class PrefixedStream(anyio.abc.ByteStream):
    """``stream``, with ``prefix`` (bytes already read from it) delivered first."""

    def __init__(self, stream: anyio.abc.ByteStream, prefix: bytes = b"") -> None:
        self._stream = stream
        self._prefix = prefix

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return chunk
        return await self._stream.receive(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def line_handshake(
    stream: anyio.abc.ByteStream, line: bytes, *, timeout_s: float, max_reply: int = 4096
) -> tuple[bytes, PrefixedStream]:
    """Send ``line``; return the one-line reply (without its newline) and the stream with any
    bytes read past the reply in front. EOF or silence before a full line raises
    ``EndOfStream`` or ``TimeoutError``."""
    await stream.send(line)
    buffer = b""
    with anyio.fail_after(timeout_s):
        while b"\n" not in buffer:
            if len(buffer) > max_reply:
                raise anyio.BrokenResourceError(f"no line ending in {max_reply} bytes of reply")
            buffer += await stream.receive()
    reply, _, rest = buffer.partition(b"\n")
    return reply.rstrip(b"\r"), PrefixedStream(stream, rest)
