"""The host side of Firecracker's vsock handshake, against a fake of Firecracker's vsock socket.

``FakeFirecrackerVsockSocket`` plays what Firecracker does on its ``uds_path``: it reads
``CONNECT <port>\\n`` and either closes the connection (nobody listens in the guest yet), stays
silent, or answers ``OK <n>\\n`` and proxies — here, echoes — the guest side.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from vm_drivers.errors import GuestUnreachable
from vm_drivers.firecracker.vsock import PrefixedByteStream, connect_vsock

pytestmark = pytest.mark.anyio

HELLO = b'{"jsonrpc":"2.0","method":"ready"}\n'


@dataclass
class FakeFirecrackerVsockSocket:
    """Serves one scripted behaviour per connection, in order; records what it was sent."""

    path: Path
    behaviours: list[str]
    connects: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            self.connections += 1
            behaviour = self.behaviours.pop(0) if self.behaviours else "eof"
            if behaviour == "eof":
                return
            reader = BufferedByteReceiveStream(stream)
            line = await reader.receive_until(b"\n", 64)
            self.connects.append(line + b"\n")
            if behaviour == "eof-after-connect":
                return
            if behaviour == "silent":
                with anyio.fail_after(10):
                    while True:
                        try:
                            await reader.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            return
            if behaviour == "garbage":
                await stream.send(b"HTTP/1.1 400 Bad Request\n")
                return
            if behaviour == "ok-split":
                await stream.send(b"O")
                await stream.send(b"K 7\nhel")
                await stream.send(b"lo")
            else:
                await stream.send(b"OK 1073741824\n" + HELLO)
            with anyio.fail_after(10):
                while True:
                    try:
                        await stream.send(await reader.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return


@pytest.fixture
async def fake_socket(tmp_path: Path) -> AsyncIterator[FakeFirecrackerVsockSocket]:
    fake = FakeFirecrackerVsockSocket(tmp_path / "v.sock", [])
    listener = await anyio.create_unix_listener(fake.path)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, fake.handle)
        yield fake
        group.cancel_scope.cancel()
    await listener.aclose()


async def _receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while len(data) < size:
            data += await stream.receive()
    return data


async def test_eof_before_ok_is_retried_and_bytes_after_the_ok_line_are_kept(
    fake_socket: FakeFirecrackerVsockSocket,
) -> None:
    fake_socket.behaviours = ["eof", "eof-after-connect", "ok"]
    with anyio.fail_after(10):
        stream = await connect_vsock(fake_socket.path, 52, deadline_s=8)
    async with stream:
        assert await _receive_exactly(stream, len(HELLO)) == HELLO
        await stream.send(b"ping\n")
        assert await _receive_exactly(stream, 5) == b"ping\n"
    assert fake_socket.connections == 3
    assert fake_socket.connects == [b"CONNECT 52\n", b"CONNECT 52\n"]


async def test_an_ok_line_split_across_reads_still_keeps_the_bytes_after_it(
    fake_socket: FakeFirecrackerVsockSocket,
) -> None:
    fake_socket.behaviours = ["ok-split"]
    with anyio.fail_after(10):
        stream = await connect_vsock(fake_socket.path, 1024, deadline_s=8)
    async with stream:
        assert await _receive_exactly(stream, 5) == b"hello"
    assert fake_socket.connects == [b"CONNECT 1024\n"]


async def test_a_silent_connection_is_abandoned_after_the_attempt_timeout_and_retried(
    fake_socket: FakeFirecrackerVsockSocket,
) -> None:
    fake_socket.behaviours = ["silent", "ok"]
    with anyio.fail_after(10):
        stream = await connect_vsock(fake_socket.path, 52, deadline_s=8, attempt_timeout_s=0.2)
    async with stream:
        assert await _receive_exactly(stream, len(HELLO)) == HELLO
    assert fake_socket.connections == 2


async def test_an_answer_that_is_not_ok_fails_at_once_without_retrying(
    fake_socket: FakeFirecrackerVsockSocket,
) -> None:
    fake_socket.behaviours = ["garbage", "ok"]
    with anyio.fail_after(10), pytest.raises(GuestUnreachable, match="not a Firecracker vsock"):
        await connect_vsock(fake_socket.path, 52, deadline_s=8)
    assert fake_socket.connections == 1


async def test_without_a_listener_the_deadline_ends_the_retries_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "v.sock"
    began = anyio.current_time()
    with anyio.fail_after(5), pytest.raises(GuestUnreachable) as raised:
        await connect_vsock(missing, 52, deadline_s=0.5)
    assert anyio.current_time() - began < 2
    message = str(raised.value)
    assert "vsock port 52" in message
    assert str(missing) in message
    assert "FileNotFoundError" in message
    assert "console log" in message


async def test_a_vmm_that_exited_stops_the_retries_at_once(tmp_path: Path) -> None:
    with anyio.fail_after(5), pytest.raises(GuestUnreachable, match="the VMM exited"):
        await connect_vsock(
            tmp_path / "v.sock", 52, deadline_s=60, still_running=lambda: "the VMM exited"
        )


async def test_a_prefixed_stream_hands_out_its_prefix_first_within_max_bytes() -> None:
    ours, theirs = socket.socketpair()
    local = await anyio.abc.SocketStream.from_socket(ours)
    remote = await anyio.abc.SocketStream.from_socket(theirs)
    stream = PrefixedByteStream(local, b"abcdef")
    async with stream, remote:
        await remote.send(b"later")
        assert await stream.receive(4) == b"abcd"
        assert await stream.receive(4) == b"ef"
        assert await _receive_exactly(stream, 5) == b"later"
        await stream.send(b"back")
        assert await _receive_exactly(remote, 4) == b"back"
