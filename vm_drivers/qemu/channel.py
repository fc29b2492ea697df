"""The host end of the agent's virtio-serial port: connect, resynchronise, hand over a stream.

QEMU's chardev serves one client at a time, and lines the guest wrote while no host was attached
reach the next one. So every new connection sends a newline (ending any half-written line of
the previous host), then a ``hello`` carrying a fresh ``session`` token (the agent kills the
commands of the previous session), and drops everything until the answer to that hello.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from vm_drivers.errors import GuestUnreachable

__all__ = ["AgentChannel", "open_agent_channel"]

# A hello can be lost if it arrives while the agent is restarting: say it again this often.
HELLO_RESEND_S = 5.0
MAX_LINE_BYTES = 96 * 1024 * 1024


class AgentChannel(anyio.abc.ByteStream):
    """A connected agent socket, starting right after the handshake's answer."""

    def __init__(self, stream: anyio.abc.SocketStream, leftover: bytes) -> None:
        self._stream = stream
        self._leftover = leftover
        self.closed = anyio.Event()

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
            return data
        return await self._stream.receive(max_bytes)

    async def aclose(self) -> None:
        self.closed.set()
        await self._stream.aclose()


async def _connect(path: Path) -> anyio.abc.SocketStream:
    # The socket exists as soon as QEMU's QMP answers, so one attempt is enough.
    try:
        return await anyio.connect_unix(str(path))
    except OSError as err:
        raise GuestUnreachable(
            f"cannot connect to the VM's agent socket {path} ({err}); the VM is not running"
        ) from err


async def open_agent_channel(path: Path, timeout: float) -> AgentChannel:
    """Connect to the agent socket at ``path`` and wait up to ``timeout`` s for its hello."""
    stream = await _connect(path)
    request_id = f"pvm-{secrets.token_hex(6)}"
    request = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "hello",
        "params": {"session": secrets.token_hex(8)},
    }
    line = b"\n" + json.dumps(request).encode() + b"\n"
    reader = BufferedByteReceiveStream(stream)
    try:
        with anyio.fail_after(timeout):
            await stream.send(line)
            while True:
                with anyio.move_on_after(HELLO_RESEND_S) as quiet:
                    received = await reader.receive_until(b"\n", MAX_LINE_BYTES)
                if quiet.cancelled_caught:
                    await stream.send(line)
                    continue
                if _answers(received, request_id):
                    break
    except TimeoutError:
        await stream.aclose()
        raise GuestUnreachable(
            f"the guest agent did not answer on {path} within {timeout:g}s"
        ) from None
    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as err:
        await stream.aclose()
        raise GuestUnreachable(
            f"the VM closed the agent socket {path} during the handshake ({err!r})"
        ) from err
    except BaseException:
        await stream.aclose()
        raise
    return AgentChannel(stream, reader.buffer)


def _answers(line: bytes, request_id: str) -> bool:
    if request_id.encode() not in line:
        return False
    try:
        message = json.loads(line)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("id") == request_id and "result" in message
