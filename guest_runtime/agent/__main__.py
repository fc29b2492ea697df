"""Entry point: ``python3 agent.pyz --root /workspace [--run-as UID:GID] [--stdio | --serial
DEVICE | --vsock PORT | --http HOST:PORT --token-env NAME | --init]``.

``--stdio`` (the default) serves one session on stdin/stdout and exits when stdin closes; every
command it started is killed then. ``--serial`` serves a virtio-serial port and ``--vsock`` an
AF_VSOCK port, session after session, for VMs (see ``channels``). ``--http`` serves the agent's
HTTP face (see ``http_face``) for hosts that reach the VM over the network only. ``--init`` is
a minimal PID 1 for containers: it reaps orphaned processes and exits promptly on SIGTERM.
``--run-as`` runs every command as that uid and gid when the agent is root (see ``identity``).
``--search-worker`` is internal: one ``fs.search`` in a child process (see ``search``).

The agent exits 0 when asked to stop (``system.shutdown``, SIGTERM): in a VM, the init then
syncs, unmounts the workspace and resets the VM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

from .channels import pipe_streams, serve_serial, serve_vsock
from .execs import Execs
from .files import Files
from .http_face import DEFAULT_PING_INTERVAL_S, HttpFace, parse_listen_address, read_token
from .identity import Identity, adopt_workspace, effective, parse_run_as
from .paths import Workspace
from .rpc import DEFAULT_MAX_LINE_BYTES, Connection
from .search import WORKER_FLAG, Searches, run_worker
from .system import System
from .terminals import Terminals
from .usage import UsageMeter

log = logging.getLogger("projectvm.agent")


class Agent:
    def __init__(self, root: str, max_line_bytes: int, run_as: Optional[Identity] = None) -> None:
        self.workspace = Workspace(root, owner=run_as)
        self.max_line_bytes = max_line_bytes
        self.connection: Optional[Connection] = None
        self.stopping = asyncio.Event()
        self.execs = Execs(self.workspace, self._notify, run_as)
        self.files = Files(self.workspace, UsageMeter(self.workspace))
        handlers: Dict[str, Any] = {}
        handlers.update(self.execs.handlers())
        handlers.update(self.files.handlers())
        handlers.update(Searches(self.workspace).handlers())
        # Terminals run as commands do: the same identity, environment and limits.
        self.terminals = Terminals(self.workspace, self._notify, run_as)
        handlers.update(self.terminals.handlers())
        self.system = System(self.workspace, [], self.stopping.set, run_as)
        handlers.update(self.system.handlers())
        self.system.capabilities.extend(handlers)
        self.session: Optional[str] = None
        handlers["hello"] = self._hello_claiming_session
        self.handlers = handlers

    async def _hello_claiming_session(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """A ``hello`` carrying a new ``session`` token comes from a host that opened a new
        channel: the commands started through the previous one are killed (a VM has one)."""
        token = params.get("session")
        if isinstance(token, str) and token != self.session:
            if self.session is not None:
                self.end_session()
            self.session = token
        return await self.system.hello(params)

    def end_session(self) -> None:
        """The host's session is over: what it started (commands, terminals) is killed."""
        self.execs.kill_all()
        self.terminals.kill_all()

    async def _notify(self, method: str, params: Dict[str, Any]) -> None:
        if self.connection is not None:
            await self.connection.notify(method, params)

    async def serve(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.connection = Connection(reader, writer, self.handlers, self.max_line_bytes)
        serving = asyncio.ensure_future(self.connection.serve())
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not serving.done():
            serving.cancel()


async def _serve_stdio(agent: Agent) -> None:
    # Keep the protocol on private descriptors; a stray print must not corrupt the channel.
    read_fd = os.dup(0)
    write_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    reader, writer = await pipe_streams(read_fd, write_fd, agent.max_line_bytes)
    try:
        await agent.serve(reader, writer)
    finally:
        agent.end_session()


def _not_dumpable() -> None:
    """Commands may run as the agent's user; without this they could open /proc/<agent>/fd/*
    and write forged messages onto the host channel. Children become dumpable again on exec."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass  # not Linux, or no libc: the VM boundary still holds


def run_init() -> int:
    """Be PID 1: reap every child that exits, stop on SIGTERM or SIGINT."""
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        received = signal.sigwaitinfo(watched)
        if received.si_signo != signal.SIGCHLD:
            return 0
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="projectvm-agent", description=__doc__)
    parser.add_argument("--root", default="/workspace", help="workspace root (default /workspace)")
    parser.add_argument(
        "--serial", metavar="DEVICE", help="serve a virtio-serial port instead of stdio"
    )
    parser.add_argument(
        "--vsock", metavar="PORT", type=int, help="listen on this AF_VSOCK port instead of stdio"
    )
    parser.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="largest request accepted",
    )
    parser.add_argument(
        "--http", metavar="HOST:PORT", help="serve the HTTP face (WebSocket at /rpc) here"
    )
    parser.add_argument("--token-file", metavar="PATH", help="bearer token for --http")
    parser.add_argument(
        "--token-env", metavar="NAME", help="environment variable holding the --http token"
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=DEFAULT_PING_INTERVAL_S,
        help="seconds between WebSocket keep-alive pings (0: none)",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--init", action="store_true", help="run as a container's PID 1")
    parser.add_argument(
        "--run-as",
        metavar="UID:GID",
        help="run commands as this uid and gid, and give them what the API writes (needs root)",
    )
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.init:
        return run_init()
    _not_dumpable()
    if args.search_worker:
        return run_worker(args.root)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if not os.path.isdir(args.root):
        sys.stderr.write("projectvm-agent: workspace root %s does not exist\n" % args.root)
        return 2
    try:
        requested = parse_run_as(args.run_as) if args.run_as else None
    except ValueError as err:
        sys.stderr.write("projectvm-agent: %s\n" % err)
        return 2
    run_as, why = effective(requested)
    (log.warning if requested is not None and run_as is None else log.info)("%s", why)
    if run_as is not None:
        adopted = adopt_workspace(os.path.realpath(args.root), run_as)
        if adopted:
            log.warning("handed %d entries of the workspace over to %r", adopted, run_as)
    listen: Optional[Tuple[Optional[str], int]] = None
    token = b""
    if args.http:
        try:
            listen = parse_listen_address(args.http)
            token = read_token(args.token_file, args.token_env)
        except ValueError as err:
            sys.stderr.write("projectvm-agent: %s\n" % err)
            return 2

    async def run() -> None:
        agent = Agent(args.root, args.max_line_bytes, run_as)
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.stopping.set)
        try:
            if listen is not None:
                face = HttpFace(agent, token, args.max_line_bytes, args.ping_interval)
                await face.serve(*listen)
            elif args.serial:
                await serve_serial(agent, args.serial)
            elif args.vsock is not None:
                await serve_vsock(agent, args.vsock)
            else:
                await _serve_stdio(agent)
        finally:
            agent.end_session()

    asyncio.run(run())
    os.sync()  # what the commands wrote reaches the disks before the VM is reset
    return 0


if __name__ == "__main__":
    sys.exit(main())
