"""The byte streams the agent serves on: stdio, a virtio-serial port, and AF_VSOCK.

A virtio-serial port has one host end, which comes and goes: the host (QEMU's chardev socket)
serves one client at a time. While no host is attached, reads see end-of-file and writes block,
so the agent keeps the port open for its whole life (closing it would make the kernel discard
what a reconnecting host sends), waits for a host by writing a bare newline (the write returns
once one is attached; hosts skip empty lines), and serves one session per attachment.
On vsock every accepted connection is a session, and a new one replaces the previous.
Whenever a session ends or is replaced, the commands it started are killed.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from typing import Any, Dict, Optional, Tuple

# How long to wait between looks at a port whose host is away, when blocking writes fail.
SERIAL_POLL_S = 0.2


async def pipe_streams(
    read_fd: int, write_fd: int, limit: int
) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over two file descriptors (pipes or character devices)."""
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


def _block_until_host(fd: int) -> None:
    """Return once a host is attached to the port (in a thread: the write blocks)."""
    os.set_blocking(fd, True)
    try:
        os.write(fd, b"\n")
        return
    except OSError:
        pass
    # A kernel that refuses the write: watch for the hang-up to clear instead.
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    while True:
        events = dict(poller.poll(1000)).get(fd, 0)
        if events and not events & select.POLLHUP:
            return
        time.sleep(SERIAL_POLL_S)


async def _wait_for_host(fd: int) -> None:
    loop = asyncio.get_event_loop()
    attached = loop.create_future()

    def wait() -> None:
        try:
            _block_until_host(fd)
        except Exception as exc:  # surfaced in the event loop
            loop.call_soon_threadsafe(_settle, attached, exc)
        else:
            loop.call_soon_threadsafe(_settle, attached, None)

    # A daemon thread, not the default executor: shutdown must not wait for a host.
    threading.Thread(target=wait, name="serial-wait", daemon=True).start()
    await attached


def _settle(future: "asyncio.Future[None]", error: Optional[BaseException]) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def serve_serial(agent: Any, device: str) -> None:
    """Serve sessions on a virtio-serial port until the agent stops."""
    port = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        while not agent.stopping.is_set():
            await _until_stopping(agent, _wait_for_host(port))
            if agent.stopping.is_set():
                break
            reader, writer = await pipe_streams(os.dup(port), os.dup(port), agent.max_line_bytes)
            try:
                await agent.serve(reader, writer)
            finally:
                # Whatever is still queued was for the host that left.
                writer.transport.abort()
                agent.end_session()
    finally:
        os.close(port)


async def _until_stopping(agent: Any, awaitable: Any) -> None:
    waiting = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(agent.stopping.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    for task in (waiting, stopping):
        if not task.done():
            task.cancel()
    if waiting.done() and not waiting.cancelled() and waiting.exception() is not None:
        raise waiting.exception()


async def serve_vsock(agent: Any, port: int) -> None:
    """Listen on AF_VSOCK ``port`` (any CID: binding a specific one fails in a guest)."""
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, port))
    await serve_listener(agent, listener)


async def serve_listener(agent: Any, listener: socket.socket) -> None:
    """Serve a bound stream socket: each connection is a session, and the newest wins."""
    listener.listen(8)
    listener.setblocking(False)
    current: Dict[str, Any] = {"writer": None, "task": None}

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous_writer, previous_task = current["writer"], current["task"]
        current["writer"], current["task"] = writer, asyncio.current_task()
        if previous_writer is not None:
            previous_writer.transport.abort()
            if previous_task is not None:
                await asyncio.wait([previous_task])
            agent.end_session()
        try:
            await agent.serve(reader, writer)
        finally:
            writer.transport.abort()
            if current["writer"] is writer:
                current["writer"], current["task"] = None, None
                agent.end_session()

    server = await asyncio.start_server(session, sock=listener, limit=agent.max_line_bytes)
    try:
        await agent.stopping.wait()
    finally:
        server.close()
        if current["writer"] is not None:
            current["writer"].transport.abort()
