"""Processes in the VM: start, stream output, feed stdin, signal, time out, and report the exit.

Each command runs in a new session, so its process group can be killed as a whole on timeout or
cancel. Output is streamed as ``exec.output`` notifications numbered by ``seq``; past the output
limit it is still read (the process never blocks on a full pipe) but dropped and reported as
truncated, except for the last ``tail_limit`` bytes, sent at the end marked ``tail``.
``exec.exit`` always comes after the last ``exec.output`` of that execution. A command is over
when its main process has exited and its output is closed: processes it left running that still
hold its output are killed with its process group.

With an identity of their own (``--run-as``), commands switch to it after the fork and before
the exec, with no supplementary groups; none of the agent's descriptors is passed on (only
their stdio pipes).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import resource
import shutil
import signal
import stat
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

from . import methods
from .errors import GuestError, InvalidParams
from .methods import ExecSignal, ExecStart, ExecStdin, ExecWait, parse
from .paths import Workspace

if TYPE_CHECKING:
    from .identity import Identity

Notify = Callable[[str, Dict[str, Any]], Awaitable[None]]

DEFAULT_OUTPUT_LIMIT = 1024 * 1024
HARD_OUTPUT_LIMIT = 64 * 1024 * 1024
READ_CHUNK = 64 * 1024
# After the main process exits, children that kept the pipes open get this long to finish writing.
DRAIN_GRACE_S = 0.25
KEEP_FINISHED = 1024
SIGNALS = {
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "INT": signal.SIGINT,
    "HUP": signal.SIGHUP,
}


def child_setup(
    fsize_limit: Optional[int], identity: "Optional[Identity]"
) -> Optional[Callable[[], None]]:
    """What the child does between fork and exec: no file may grow past ``fsize_limit`` (a
    write beyond fails with EFBIG, "File too large", instead of a SIGXFSZ kill), and it becomes
    the command identity (last: setting limits needs no privilege, the switch drops it)."""
    if fsize_limit is None and identity is None:
        return None

    def apply() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if identity is not None:
            identity.drop_privileges()

    return apply


def default_shell() -> str:
    return shutil.which("bash") or "/bin/sh"


class Execution:
    def __init__(self, exec_id: str, command: Any, limit: int, timeout: Optional[float]) -> None:
        self.exec_id = exec_id
        self.command = command
        self.limit = limit
        self.timeout = timeout
        self.started = time.monotonic()
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.seq = 0
        self.produced = {"stdout": 0, "stderr": 0}
        self.sent = {"stdout": 0, "stderr": 0}
        self.tail_limit = 0
        self.tails = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False
        self.timed_out = False
        self.killed = False
        self.transports: List[asyncio.BaseTransport] = []
        self.pumps: List["asyncio.Task[None]"] = []
        self.supervisor: Optional["asyncio.Task[None]"] = None
        self.feeder: Optional["asyncio.Task[None]"] = None
        self.done = asyncio.Event()
        self.result: Optional[Dict[str, Any]] = None

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        if self.proc is None or self.proc.pid is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Execs:
    """Handlers for the ``exec.*`` methods."""

    def __init__(
        self, workspace: Workspace, notify: Notify, identity: "Optional[Identity]" = None
    ) -> None:
        self.workspace = workspace
        self.notify = notify
        self.identity = identity
        self.running: Dict[str, Execution] = {}
        self.finished: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()

    def handlers(self) -> Dict[str, Callable[[Dict[str, Any]], Awaitable[Dict[str, Any]]]]:
        return {
            methods.EXEC_START: self.start,
            methods.EXEC_STDIN: self.stdin,
            methods.EXEC_SIGNAL: self.signal,
            methods.EXEC_WAIT: self.wait,
            methods.EXEC_LIST: self.list,
        }

    async def start(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(ExecStart, params)
        command = request.command
        if isinstance(command, str):
            if not command.strip():
                raise InvalidParams("command is empty")
            argv = [request.shell or default_shell(), "-c", command]
        elif command:
            argv = list(command)
        else:
            raise InvalidParams("command must be a shell string or a non-empty list of strings")
        if any("\x00" in arg for arg in argv):
            raise InvalidParams("command contains a NUL byte")
        exec_id = request.exec_id or uuid.uuid4().hex
        if exec_id in self.running or exec_id in self.finished:
            raise GuestError("exists", "execution %r already exists" % exec_id)
        timeout = request.timeout_s
        if timeout is not None and timeout <= 0:
            raise InvalidParams("timeout_s must be positive")
        limit = DEFAULT_OUTPUT_LIMIT if request.output_limit is None else request.output_limit
        limit = max(0, min(limit, HARD_OUTPUT_LIMIT))
        tail_limit = max(0, min(request.tail_limit or 0, HARD_OUTPUT_LIMIT))
        env = dict(os.environ)
        if self.identity is not None:
            env.update(self.identity.environment(self.workspace.root))
        for key, value in (request.env or {}).items():
            if not key or "=" in key or "\x00" in key:
                raise InvalidParams(
                    "environment variable name %r is not valid: names are non-empty and have "
                    "no '=' or NUL" % key
                )
            if "\x00" in value:
                raise InvalidParams(
                    "the value of environment variable %s contains a NUL byte, which an "
                    "environment cannot hold; remove it" % key
                )
            env[key] = value
        with self.workspace.resolve(request.cwd or ".") as res:
            st = res.lstat()
            if st is None:
                raise GuestError("not_found", "working directory %r does not exist" % res.path)
            if not stat.S_ISDIR(st.st_mode):
                raise GuestError(
                    "not_a_directory", "working directory %r is not a directory" % res.path
                )
            cwd = self.workspace.real_path(res)
        env["PWD"] = cwd
        stdin_data = request.stdin
        keep_stdin = request.stdin_open
        fsize_limit = request.fsize_limit
        if fsize_limit is not None and fsize_limit < 0:
            raise InvalidParams("fsize_limit must not be negative")

        ex = Execution(exec_id, command, limit, timeout)
        ex.tail_limit = tail_limit
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            ex.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE
                if (stdin_data is not None or keep_stdin)
                else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=child_setup(fsize_limit, self.identity),
            )
        except FileNotFoundError:
            os.close(out_r)
            os.close(err_r)
            raise GuestError("command_not_found", "%r was not found in the VM" % argv[0]) from None
        except PermissionError:
            os.close(out_r)
            os.close(err_r)
            raise GuestError("permission_denied", "%r is not executable" % argv[0]) from None
        except BlockingIOError:
            os.close(out_r)
            os.close(err_r)
            raise GuestError(
                "resource_exhausted",
                "cannot start the command: the VM has reached its process limit; end some "
                "processes, or stop_project and start_project to restart the VM",
            ) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        self.running[exec_id] = ex
        loop = asyncio.get_event_loop()
        for name, fd in (("stdout", out_r), ("stderr", err_r)):
            reader = asyncio.StreamReader(limit=READ_CHUNK * 2)
            transport, _ = await loop.connect_read_pipe(
                lambda r=reader: asyncio.StreamReaderProtocol(r),  # type: ignore[misc]
                os.fdopen(fd, "rb", 0),
            )
            ex.transports.append(transport)
            ex.pumps.append(asyncio.ensure_future(self._pump(ex, name, reader)))
        ex.supervisor = asyncio.ensure_future(self._supervise(ex))
        if stdin_data is not None and ex.proc.stdin is not None:
            # Fed in the background: a command that reads slowly (or never) must neither hold
            # up this answer nor escape its timeout.
            ex.feeder = asyncio.ensure_future(
                self._feed_quietly(ex, base64.b64decode(stdin_data), eof=not keep_stdin)
            )
        return {"exec_id": exec_id, "pid": ex.proc.pid}

    async def _pump(self, ex: Execution, stream: str, reader: asyncio.StreamReader) -> None:
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return
            ex.produced[stream] += len(chunk)
            room = ex.limit - ex.sent[stream]
            if len(chunk) > room:
                ex.truncated = True
                self._keep_tail(ex, stream, chunk[max(room, 0) :])
                chunk = chunk[: max(room, 0)]
                if not chunk:
                    continue
            ex.sent[stream] += len(chunk)
            seq = ex.seq
            ex.seq += 1
            await self.notify(
                methods.EXEC_OUTPUT,
                {
                    "exec_id": ex.exec_id,
                    "seq": seq,
                    "stream": stream,
                    "data": base64.b64encode(chunk).decode("ascii"),
                },
            )

    @staticmethod
    def _keep_tail(ex: Execution, stream: str, dropped: bytes) -> None:
        if not ex.tail_limit:
            return
        tail = ex.tails[stream]
        tail += dropped
        if len(tail) > ex.tail_limit:
            del tail[: len(tail) - ex.tail_limit]

    async def _send_tails(self, ex: Execution) -> None:
        """After the head, the last ``tail_limit`` bytes of each stream that overflowed."""
        for stream, tail in ex.tails.items():
            if not tail:
                continue
            skipped = ex.produced[stream] - ex.sent[stream] - len(tail)
            seq = ex.seq
            ex.seq += 1
            await self.notify(
                methods.EXEC_OUTPUT,
                {
                    "exec_id": ex.exec_id,
                    "seq": seq,
                    "stream": stream,
                    "data": base64.b64encode(bytes(tail)).decode("ascii"),
                    "tail": True,
                    "skipped": skipped,
                },
            )

    async def _supervise(self, ex: Execution) -> None:
        assert ex.proc is not None
        try:
            try:
                await asyncio.wait_for(ex.proc.wait(), ex.timeout)
            except asyncio.TimeoutError:
                ex.timed_out = True
                ex.kill_group()
                await ex.proc.wait()
            _, pending = await asyncio.wait(ex.pumps, timeout=DRAIN_GRACE_S)
            if pending:
                # Processes it left behind still hold its output: the command is not over
                # until they are gone (a server meant to outlive it redirects its output).
                ex.kill_group()
                _, pending = await asyncio.wait(pending, timeout=DRAIN_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            await self._send_tails(ex)
        finally:
            if ex.feeder is not None:
                ex.feeder.cancel()
            for transport in ex.transports:
                transport.close()
            code = ex.proc.returncode
            signum = -code if code is not None and code < 0 else None
            result = {
                "exec_id": ex.exec_id,
                "exit_code": (128 + signum) if signum else code,
                "signal": signum,
                "timed_out": ex.timed_out,
                "killed": ex.killed,
                "truncated": ex.truncated,
                "stdout_bytes": ex.produced["stdout"],
                "stderr_bytes": ex.produced["stderr"],
                "duration_ms": int((time.monotonic() - ex.started) * 1000),
            }
            ex.result = result
            self.running.pop(ex.exec_id, None)
            self.finished[ex.exec_id] = result
            while len(self.finished) > KEEP_FINISHED:
                self.finished.popitem(last=False)
            ex.done.set()
            await self.notify(methods.EXEC_EXIT, result)

    def _get(self, exec_id: str) -> Execution:
        ex = self.running.get(exec_id)
        if ex is None:
            if exec_id in self.finished:
                raise GuestError("finished", "execution %r has already finished" % exec_id)
            raise GuestError("unknown_exec", "no execution %r in this VM" % exec_id)
        return ex

    async def _feed(self, ex: Execution, data: bytes, eof: bool) -> None:
        assert ex.proc is not None
        pipe = ex.proc.stdin
        if pipe is None:
            raise GuestError(
                "stdin_closed",
                "this command was started without an open stdin; start it with stdin_open",
            )
        try:
            if data:
                pipe.write(data)
                await pipe.drain()
            if eof:
                pipe.close()
        except (BrokenPipeError, ConnectionResetError):
            raise GuestError("stdin_closed", "the command has closed its stdin") from None

    async def _feed_quietly(self, ex: Execution, data: bytes, eof: bool) -> None:
        try:
            await self._feed(ex, data, eof)
        except GuestError:
            pass  # the command closed its stdin early: its own business, as in a shell pipe

    async def stdin(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(ExecStdin, params)
        ex = self._get(request.exec_id)
        data = base64.b64decode(request.data)
        await self._feed(ex, data, eof=request.eof)
        return {"exec_id": ex.exec_id, "written": len(data)}

    async def signal(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(ExecSignal, params)
        ex = self._get(request.exec_id)
        name = request.signal
        signum = SIGNALS.get(name) if isinstance(name, str) else name
        if not isinstance(signum, int):
            raise InvalidParams("signal must be one of %s or a number" % ", ".join(SIGNALS))
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            ex.killed = True
        ex.kill_group(signum)
        return {"exec_id": ex.exec_id, "signalled": True}

    async def wait(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(ExecWait, params)
        exec_id = request.exec_id
        if exec_id in self.finished:
            return dict(self.finished[exec_id], finished=True)
        ex = self._get(exec_id)
        try:
            await asyncio.wait_for(asyncio.shield(ex.done.wait()), request.timeout_s)
        except asyncio.TimeoutError:
            return {"exec_id": ex.exec_id, "finished": False}
        assert ex.result is not None
        return dict(ex.result, finished=True)

    async def list(self, params: Dict[str, Any]) -> Dict[str, Any]:
        now = time.monotonic()
        return {
            "running": [
                {
                    "exec_id": ex.exec_id,
                    "pid": ex.proc.pid if ex.proc else None,
                    "running_ms": int((now - ex.started) * 1000),
                }
                for ex in self.running.values()
            ]
        }

    def kill_all(self) -> None:
        for ex in list(self.running.values()):
            ex.killed = True
            ex.kill_group()
