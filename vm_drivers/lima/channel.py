"""The channel to a Lima guest: ``limactl shell`` running the launcher, its stdio as one stream.

``limactl shell`` inherits its standard streams and allocates no TTY when stdout is a pipe, so
the agent's newline JSON-RPC passes through ssh untouched. The login shell Lima starts may print
before the agent does; everything up to the launcher's marker line is dropped (and logged).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import Process

from vm_drivers.errors import GuestUnreachable

__all__ = ["LauncherExited", "LimaChannel", "open_launcher", "terminate"]

STOP_GRACE_S = 5.0
# ssh's status for a dropped connection, which `limactl shell` passes on.
SSH_FAILED = 255


class LauncherExited(Exception):
    """The launcher ended before its marker: ``code`` says why (see guest_launcher)."""

    def __init__(self, code: int | None, log_tail: str) -> None:
        super().__init__(f"the launcher exited with status {code}: {log_tail}")
        self.code = code
        self.log_tail = log_tail


class LimaChannel(anyio.abc.ByteStream):
    """The agent's stdio through ``limactl shell``; closing it ends the agent and its commands."""

    def __init__(
        self, process: Process, log_path: Path, pending: bytes, preamble: bytes = b""
    ) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._log_path = log_path
        self._pending = pending
        self.preamble = preamble  # what came before the marker (login noise, the launcher's status)

    async def send(self, item: bytes) -> None:
        await self._stdin.send(item)

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return chunk
        try:
            return await self._stdout.receive(max_bytes)
        except anyio.EndOfStream:
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            code = self.process.returncode
            if code not in (0, None, -signal.SIGKILL, -signal.SIGTERM):
                what = "the ssh connection dropped" if code == SSH_FAILED else "it exited"
                raise anyio.BrokenResourceError(
                    f"the guest agent's limactl shell ended ({what}, status {code}): "
                    f"{await tail(self._log_path)}"
                ) from None
            raise

    async def aclose(self) -> None:
        await terminate(self.process)


async def terminate(process: Process) -> None:
    """Close stdin (the agent kills its commands and exits, ssh follows), then force."""
    with anyio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(STOP_GRACE_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def tail(path: Path, size: int = 2000) -> str:
    try:
        data = await anyio.Path(path).read_bytes()
    except OSError:
        return "(no log)"
    return data[-size:].decode(errors="replace").strip() or "(no output)"


async def open_launcher(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    marker: bytes,
    log_path: Path,
    timeout_s: float,
) -> LimaChannel:
    """Start ``argv`` (``limactl shell ... launcher``) and wait for the marker line.

    Raises :class:`LauncherExited` when the launcher ends first, and GuestUnreachable when
    neither happens within ``timeout_s``.
    """
    await anyio.Path(log_path.parent).mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await anyio.open_process(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
        )
    assert process.stdout is not None
    received = b""
    line_end = marker + b"\n"
    try:
        with anyio.fail_after(timeout_s):
            while line_end not in received:
                try:
                    received += await process.stdout.receive()
                except anyio.EndOfStream:
                    await process.wait()
                    raise LauncherExited(process.returncode, await tail(log_path)) from None
    except TimeoutError:
        await terminate(process)
        raise GuestUnreachable(
            f"the guest agent did not start within {timeout_s:g}s through `limactl shell`; "
            f"the instance may be overloaded or its ssh stuck ({await tail(log_path)})"
        ) from None
    except BaseException:
        await terminate(process)
        raise
    noise, _, rest = received.partition(line_end)
    if noise.strip():
        with log_path.open("ab") as log:
            log.write(b"[dropped before the agent started] " + noise[-2000:] + b"\n")
    return LimaChannel(process, log_path, rest, noise)
