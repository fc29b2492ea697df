"""Clients that ask for a lot and then read none of it: a WebSocket and plain HTTP requests over
raw sockets with small receive buffers, so the server's writes stall almost at once."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

__all__ = ["held_by_server", "raw_request", "raw_websocket", "server_rss_mib"]


def _stalled_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    return sock


@contextmanager
def raw_request(host: str, port: int, request: bytes) -> Iterator[socket.socket]:
    """``request`` sent on a fresh connection whose answer is never read."""
    sock = _stalled_socket(host, port)
    try:
        sock.sendall(request)
        yield sock
    finally:
        sock.close()


@contextmanager
def raw_websocket(
    host: str, port: int, path: str, protocols: list[str], messages: list[dict[str, Any]]
) -> Iterator[socket.socket]:
    """A WebSocket that sends ``messages`` (as many as the server takes) and reads nothing."""
    sock = _stalled_socket(host, port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=host, target=path, subprotocols=protocols)))
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            data = sock.recv(4096)
            assert data, "the server refused the WebSocket"
            ws.receive_data(data)
        sock.setblocking(False)
        for message in messages:
            try:
                sock.sendall(ws.send(TextMessage(json.dumps(message))))
            except BlockingIOError:
                break  # the server stopped reading us: it has enough to send
        yield sock
    finally:
        sock.close()


def held_by_server(sock: socket.socket) -> bool:
    """Whether the server process still holds the other end of ``sock`` open.

    A server that closes a connection whose client reads nothing cannot be seen from the client
    (the kernel goes on trying to deliver what was sent, then the FIN, to a socket that does
    not read): look at the server's end in the kernel's table instead. Once the process closed
    it, it is an orphan (no inode) or gone.
    """
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                return inode != "0"
    return False


def server_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
