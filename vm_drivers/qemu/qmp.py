"""A small async client for QEMU's machine protocol (QMP) on a unix socket.

QEMU's QMP socket serves one client at a time, so callers open a connection per operation and
close it promptly (``async with QMPClient.connect(path) as qmp``). Replies are matched to the
command just sent; asynchronous events in between are skipped (kept in ``events``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from vm_drivers.errors import DriverTimeout, VMOperationFailed

__all__ = ["QMPClient", "QMPError"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class QMPError(VMOperationFailed):
    """QEMU answered a command with an error (``error_class`` is QMP's ``class``)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QEMU refused {command}: {description} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.description = description


class QMPClient:
    def __init__(self, stream: anyio.abc.SocketStream, timeout: float) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._timeout = timeout
        self.version: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: Path, timeout: float = 10.0) -> QMPClient:
        """Connect, read the greeting and leave capabilities negotiation mode."""
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_unix(str(path))
        except (OSError, TimeoutError) as err:
            raise VMOperationFailed(
                f"cannot reach QEMU's control socket {path} ({err}); the VM's QEMU is not running"
            ) from err
        client = cls(stream, timeout)
        try:
            greeting = await client._receive()
            client.version = greeting.get("QMP", {}).get("version", {})
            await client.execute("qmp_capabilities")
        except BaseException:
            await client.aclose()
            raise
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _receive(self) -> dict[str, Any]:
        try:
            with anyio.fail_after(self._timeout):
                line = await self._reader.receive_until(b"\n", MAX_MESSAGE_BYTES)
        except TimeoutError:
            raise DriverTimeout(
                f"QEMU did not answer on its control socket within {self._timeout:g}s"
            ) from None
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            raise VMOperationFailed("QEMU closed its control socket (it exited)") from None
        try:
            message = json.loads(line)
        except ValueError as err:
            raise VMOperationFailed(f"QEMU sent something that is not JSON: {line[:80]!r}") from err
        if not isinstance(message, dict):
            raise VMOperationFailed(f"QEMU sent a non-object message: {line[:80]!r}")
        return message

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, fds: list[int] | None = None
    ) -> Any:
        """Run ``command`` and return its ``return`` value; ``fds`` travel with it
        (SCM_RIGHTS), as ``getfd`` needs."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        try:
            if fds:
                assert isinstance(self._stream, anyio.abc.UNIXSocketStream)
                await self._stream.send_fds(data, fds)
            else:
                await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
            raise VMOperationFailed(f"QEMU's control socket broke ({err})") from err
        while True:
            message = await self._receive()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                error = message["error"] or {}
                raise QMPError(command, str(error.get("class")), str(error.get("desc")))
            if "return" in message:
                return message["return"]
