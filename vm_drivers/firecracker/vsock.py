"""The host side of Firecracker's vsock: ``CONNECT <port>\\n`` on its unix socket, ``OK <n>\\n``.

Firecracker proxies each connection to its vsock unix socket into the guest once the host sends
``CONNECT <port>\\n``; it answers ``OK <host-port>\\n`` when a guest program accepted, and simply
closes the connection when nobody listens yet (the guest is still booting). So the host retries
with backoff until a deadline, with a bounded wait for each answer. Whatever the guest sent
right after the ``OK`` line already belongs to the protocol: :class:`PrefixedByteStream` hands
those bytes out first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from vm_drivers.errors import GuestUnreachable

__all__ = ["PrefixedByteStream", "VsockHandshakeRefused", "connect_vsock", "handshake"]

_OK_LINE = re.compile(rb"OK \d+")
_MAX_LINE = 64
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 0.5


class PrefixedByteStream(anyio.abc.ByteStream):
    """A byte stream that first returns ``prefix`` (bytes already read from ``stream``)."""

    def __init__(self, stream: anyio.abc.ByteStream, prefix: bytes = b"") -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return chunk
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


class VsockHandshakeRefused(GuestUnreachable):
    """Firecracker closed the connection or did not answer: nobody listens on the port yet."""


async def handshake(stream: anyio.abc.ByteStream, port: int) -> bytes:
    """Send ``CONNECT``, read the ``OK`` line byte-exactly; return the bytes that followed it."""
    await stream.send(f"CONNECT {port}\n".encode())
    received = b""
    while b"\n" not in received:
        try:
            chunk = await stream.receive(_MAX_LINE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as err:
            raise VsockHandshakeRefused(
                f"the connection closed before OK ({type(err).__name__})"
            ) from None
        received += chunk
        if len(received) > _MAX_LINE and b"\n" not in received[:_MAX_LINE]:
            break
    line, _, rest = received.partition(b"\n")
    if not _OK_LINE.fullmatch(line):
        raise GuestUnreachable(
            f"the vsock socket answered {line[:_MAX_LINE]!r} instead of 'OK <port>'; it is not a "
            "Firecracker vsock socket: check the VM's runtime directory"
        )
    return rest


async def connect_vsock(
    uds_path: Path,
    port: int,
    *,
    deadline_s: float,
    attempt_timeout_s: float = 1.0,
    still_running: Callable[[], str | None] = lambda: None,
) -> PrefixedByteStream:
    """A stream to the guest program accepting on vsock ``port``, retried until the deadline.

    ``still_running`` returns why retrying is pointless (the VMM exited), or ``None``.
    """
    backoff = FIRST_BACKOFF_S
    last = "no attempt made"
    with anyio.move_on_after(deadline_s):
        while True:
            gone = still_running()
            if gone is not None:
                raise GuestUnreachable(f"cannot reach the guest agent: {gone}")
            stream: anyio.abc.ByteStream | None = None
            # Order matters: TimeoutError and GuestUnreachable are OSErrors too.
            try:
                stream = await anyio.connect_unix(uds_path)
                with anyio.fail_after(attempt_timeout_s):
                    rest = await handshake(stream, port)
                return PrefixedByteStream(stream, rest)
            except TimeoutError:
                last = f"no answer to CONNECT within {attempt_timeout_s:g}s"
            except VsockHandshakeRefused as err:
                last = str(err)
            except GuestUnreachable:
                if stream is not None:
                    await _close(stream)
                raise
            except OSError as err:
                last = f"{type(err).__name__}: {err}"
            except BaseException:
                if stream is not None:
                    await _close(stream)
                raise
            if stream is not None:
                await _close(stream)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
    raise GuestUnreachable(
        f"no guest agent accepted vsock port {port} through {uds_path} within {deadline_s:g}s "
        f"(last attempt: {last}); the VM is still booting or its agent is not running: check "
        "the VM's console log"
    )


async def _close(stream: anyio.abc.ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()
