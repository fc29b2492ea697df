"""Egress for a sandbox without the host's network: slirp4netns in a namespace of its own.

A project with ``network: egress`` gets its own network namespace, reached through user-mode
networking: slirp4netns turns the sandbox's packets into ordinary sockets of the host, so the
sandbox reaches what the host reaches, except the host's loopback (``--disable-host-loopback``):
ProjectVM's own port and every service bound to 127.0.0.1 stay out of reach, and so do the
host's abstract unix sockets (they belong to a network namespace). Inside, the sandbox is
10.0.2.100 with the gateway 10.0.2.2 and a resolver at 10.0.2.3.

slirp4netns runs under a seccomp filter (and, started by root, in a sandbox of its own without
capabilities), ends when its sandbox does, and with the server (``--exit-fd``: a pipe only the
server holds). Without root it needs /dev/net/tun open to the server's user (mode 0666, as most
distributions ship it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from vm_drivers.errors import DriverUnavailable, VMOperationFailed

__all__ = ["INSTALL_HINT", "UserModeNetwork", "find_slirp4netns", "read_until_eof"]

INSTALL_HINT = "install slirp4netns (Debian/Ubuntu: apt-get install slirp4netns)"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


def find_slirp4netns(configured: str) -> str:
    found = shutil.which(configured)
    if found is None:
        raise DriverUnavailable(
            "local",
            f"{configured!r} was not found, and a project with network egress needs it for a "
            "network namespace of its own",
            INSTALL_HINT,
        )
    return found


async def read_until_eof(fd: int, *, timeout_s: float, limit: int = 65536) -> bytes:
    """Everything written to the pipe ``fd`` until its writers close it (bounded)."""
    os.set_blocking(fd, False)
    data = b""
    with anyio.fail_after(timeout_s):
        while len(data) <= limit:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return data
            data += chunk
    raise VMOperationFailed(f"more than {limit} bytes on a setup pipe; this is a bug")


@dataclass
class UserModeNetwork:
    """One running slirp4netns."""

    process: anyio.abc.Process
    exit_fd: int

    @classmethod
    async def start(
        cls, slirp4netns: str, netns: str, userns: str | None, log_path: Path
    ) -> UserModeNetwork:
        """Serve the network namespace at the path ``netns`` (joining ``userns`` first when the
        server is not root; messages go to ``log_path``); returns once the interface inside
        is up."""
        ready_read, ready_write = os.pipe()
        exit_read, exit_write = os.pipe()
        argv = [
            slirp4netns,
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-seccomp",
            f"--ready-fd={ready_write}",
            f"--exit-fd={exit_read}",
            "--netns-type=path",
        ]
        if userns is None:
            # As root it drops its capabilities in a mount namespace of its own. (Not as a
            # user: it would have to be root in the sandbox's user namespace to do that.)
            argv.append("--enable-sandbox")
        else:
            argv.append(f"--userns-path={userns}")
        argv += [netns, "tap0"]
        try:
            with log_path.open("ab") as log:
                process = await anyio.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(ready_write, exit_read),
                )
        except OSError as err:
            for fd in (ready_read, ready_write, exit_read, exit_write):
                os.close(fd)
            raise DriverUnavailable(
                "local", f"slirp4netns did not start: {err}", INSTALL_HINT
            ) from err
        os.close(ready_write)
        os.close(exit_read)
        network = cls(process, exit_write)
        try:
            ready = await read_until_eof(ready_read, timeout_s=READY_TIMEOUT_S, limit=16)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await network.aclose()
            raise
        finally:
            os.close(ready_read)
        if ready != b"1":
            await network.aclose()
            why = _tail(log_path)
            raise VMOperationFailed(
                f"slirp4netns could not give the sandbox its network: {why}; check that "
                "slirp4netns works here (slirp4netns --version) or set the project's network to "
                "none"
            )
        return network

    async def aclose(self) -> None:
        """Stop slirp4netns (closing the exit pipe asks it to; a kill makes sure)."""
        with anyio.CancelScope(shield=True):
            if self.exit_fd >= 0:
                os.close(self.exit_fd)
                self.exit_fd = -1
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


def _tail(path: Path, size: int = 600) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            data = handle.read()
    except OSError:
        return "no message"
    return data.decode(errors="replace").strip() or "no message"
