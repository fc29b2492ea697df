"""Terminals in the VM: a program on a pseudo-terminal, driven by the host.

``term.open`` makes a PTY pair (``openpty``) and starts the program in a new session with the
PTY as its controlling terminal, ``TERM=xterm-256color``, the given environment and a working
directory in the workspace, spawned as commands are (same environment, same file-size limit,
same identity: with ``--run-as`` the program runs as that uid and gid, and the PTY is theirs).
What it writes is read from the PTY's master side and sent as ``term.output``
notifications numbered by ``seq``; ``term.exit`` comes after the last of them. ``term.input``
writes to the terminal, ``term.resize`` sets its size (``TIOCSWINSZ``: the kernel signals
``SIGWINCH`` to the foreground process group when the size changes, and the agent sends one
more so a program redraws even when it does not), ``term.close`` hangs the session up
(``SIGHUP`` to each of its processes) and kills what is left after a grace period.

Flow control: at most ``MAX_PENDING`` bytes of output wait in the agent. Past that it stops
reading the PTY until the host has taken them, so a program printing faster than the host
reads blocks on its terminal, as on a slow line, and the agent's memory stays bounded. Output
for readers that join late is kept by the host, which sees every byte.

A terminal lives as long as the channel session that opened it: when the session ends or a
newer one replaces it, terminals are killed like commands (``kill_all``).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import signal
import stat
import struct
import termios
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

from . import methods
from .errors import GuestError, InvalidParams
from .execs import child_setup, default_shell
from .methods import Empty, TermClose, TermInput, TermOpen, TermResize, parse
from .paths import Workspace

if TYPE_CHECKING:
    from .identity import Identity

Notify = Callable[[str, Dict[str, Any]], Awaitable[None]]

READ_CHUNK = 64 * 1024
# Output waiting to be sent: past this, the PTY is not read until the host catches up.
MAX_PENDING = 256 * 1024
SEND_CHUNK = 64 * 1024
# After the program exits, what it left behind gets this long to finish writing, and the
# terminal this many such rounds to report that nothing holds it any more.
DRAIN_GRACE_S = 0.25
DRAIN_ROUNDS = 8
# A program that reads none of its input for this long makes term.input fail.
INPUT_TIMEOUT_S = 30.0
MAX_TERMINALS = 64
MAX_SIZE = 1000
MAX_CLOSE_GRACE_S = 30.0
TERM_ENV = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _utf8_input(fd: int) -> None:
    """Let the line discipline erase a whole UTF-8 character on backspace."""
    iutf8 = getattr(termios, "IUTF8", 0)
    if not iutf8:
        return
    try:
        attrs = termios.tcgetattr(fd)
        attrs[0] |= iutf8
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass


def _child_setup(fsize_limit: Optional[int], identity: "Optional[Identity]") -> Callable[[], None]:
    """In the child, between fork and exec (after ``setsid``): the PTY becomes the controlling
    terminal, then what a command's child does (its file-size limit, then its identity)."""
    as_a_command = child_setup(fsize_limit, identity)

    def apply() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if as_a_command is not None:
            as_a_command()

    return apply


def session_members(sid: int) -> List[int]:
    """The processes of session ``sid`` (from ``/proc``; just the leader where there is none)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return [sid]
    found = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                text = handle.read()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses.
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(sid).encode():
            found.append(int(name))
    return found


def signal_session(sid: int, signum: int) -> None:
    """Send ``signum`` to every process of the session (its process groups included)."""
    for pid in session_members(sid):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(sid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Terminal:
    def __init__(self, term_id: str, master: int, proc: "asyncio.subprocess.Process") -> None:
        self.term_id = term_id
        self.master = master
        self.proc = proc
        self.pid = proc.pid
        self.cols = 0
        self.rows = 0
        self.started = time.monotonic()
        self.seq = 0
        self.output_bytes = 0
        self.pending = bytearray()
        self.reading = False
        self.eof = False
        self.master_closed = False
        self.data_ready = asyncio.Event()
        self.input_lock = asyncio.Lock()
        self.writable: Optional["asyncio.Future[None]"] = None  # input waiting for room
        self.closed = False  # the host asked for it to end
        self.killed = False  # what was left was killed
        self.done = asyncio.Event()
        self.result: Optional[Dict[str, Any]] = None
        self.pump: Optional["asyncio.Task[None]"] = None
        self.supervisor: Optional["asyncio.Task[None]"] = None

    # -- reading the master side --------------------------------------------------------------

    def start_reading(self) -> None:
        if self.reading or self.eof or self.master_closed:
            return
        asyncio.get_event_loop().add_reader(self.master, self._readable)
        self.reading = True

    def stop_reading(self) -> None:
        if self.reading:
            asyncio.get_event_loop().remove_reader(self.master)
            self.reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: no process holds the terminal any more
        if data:
            self.pending += data
            if len(self.pending) >= MAX_PENDING:
                self.stop_reading()
        else:
            self.eof = True
            self.stop_reading()
        self.data_ready.set()

    def close_master(self) -> None:
        self.stop_reading()
        if not self.master_closed:
            self.master_closed = True
            asyncio.get_event_loop().remove_writer(self.master)
            if self.writable is not None and not self.writable.done():
                self.writable.set_result(None)  # the writer sees it closed and gives up
            os.close(self.master)
        self.eof = True
        self.data_ready.set()

    def hang_up(self, signum: int = signal.SIGHUP) -> None:
        if self.result is None:
            signal_session(self.pid, signum)

    def info(self) -> Dict[str, Any]:
        return {
            "term_id": self.term_id,
            "pid": self.pid,
            "cols": self.cols,
            "rows": self.rows,
            "running_ms": int((time.monotonic() - self.started) * 1000),
            "output_bytes": self.output_bytes,
        }


class Terminals:
    """Handlers for the ``term.*`` methods. ``identity`` is who programs run as (the agent's
    ``--run-as``), as for commands; None: the agent's own."""

    def __init__(
        self, workspace: Workspace, notify: Notify, identity: "Optional[Identity]" = None
    ) -> None:
        self.workspace = workspace
        self.notify = notify
        self.identity = identity
        self.running: Dict[str, Terminal] = {}

    def handlers(self) -> Dict[str, Callable[[Dict[str, Any]], Awaitable[Dict[str, Any]]]]:
        return {
            methods.TERM_OPEN: self.open,
            methods.TERM_INPUT: self.input,
            methods.TERM_RESIZE: self.resize,
            methods.TERM_CLOSE: self.close,
            methods.TERM_LIST: self.list,
        }

    # -- opening ------------------------------------------------------------------------------

    def _argv(self, request: TermOpen) -> List[str]:
        shell = request.shell or default_shell()
        command = request.command
        if command is None:
            argv = [shell, "-l"]
        elif isinstance(command, str):
            if not command.strip():
                raise InvalidParams("command is empty; leave it out for the login shell")
            argv = [shell, "-c", command]
        elif command:
            argv = list(command)
        else:
            raise InvalidParams("command must be a shell string, a non-empty list, or left out")
        if any("\x00" in arg for arg in argv):
            raise InvalidParams("command contains a NUL byte")
        return argv

    def _environment(self, request: TermOpen) -> Dict[str, str]:
        env = dict(os.environ)
        if self.identity is not None:
            env.update(self.identity.environment(self.workspace.root))
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        env.update(TERM_ENV)
        if not (env.get("LANG") or env.get("LC_ALL")):
            env["LANG"] = "C.UTF-8"
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
        return env

    def _cwd(self, path: Optional[str]) -> str:
        with self.workspace.resolve(path or ".") as res:
            st = res.lstat()
            if st is None:
                raise GuestError("not_found", "working directory %r does not exist" % res.path)
            if not stat.S_ISDIR(st.st_mode):
                raise GuestError(
                    "not_a_directory", "working directory %r is not a directory" % res.path
                )
            return self.workspace.real_path(res)

    async def open(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(TermOpen, params)
        argv = self._argv(request)
        for name, value in (("cols", request.cols), ("rows", request.rows)):
            if not 1 <= value <= MAX_SIZE:
                raise InvalidParams("%s must be between 1 and %d" % (name, MAX_SIZE))
        if request.fsize_limit is not None and request.fsize_limit < 0:
            raise InvalidParams("fsize_limit must not be negative")
        term_id = request.term_id or uuid.uuid4().hex
        if term_id in self.running:
            raise GuestError("exists", "terminal %r already exists" % term_id)
        if len(self.running) >= MAX_TERMINALS:
            raise GuestError(
                "resource_exhausted",
                "%d terminals are open in this VM; close one first" % MAX_TERMINALS,
            )
        env = self._environment(request)
        cwd = self._cwd(request.cwd)
        env["PWD"] = cwd
        master, slave = os.openpty()
        try:
            _set_size(slave, request.cols, request.rows)
            _utf8_input(slave)
            if self.identity is not None:
                self.identity.own_fd(slave)  # the program may reopen its terminal by name
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup(request.fsize_limit, self.identity),
            )
        except BaseException as err:
            os.close(master)
            raise _spawn_error(err, argv[0]) from None
        finally:
            os.close(slave)  # only the program holds it now: its exit brings EIO
        os.set_blocking(master, False)
        term = Terminal(term_id, master, proc)
        term.cols, term.rows = request.cols, request.rows
        self.running[term_id] = term
        term.start_reading()
        term.pump = asyncio.ensure_future(self._pump(term))
        term.supervisor = asyncio.ensure_future(self._supervise(term))
        return {"term_id": term_id, "pid": proc.pid, "argv": argv}

    # -- output and the end -------------------------------------------------------------------

    async def _pump(self, term: Terminal) -> None:
        """Send what the program wrote, in order, until the terminal reports no more."""
        while True:
            await term.data_ready.wait()
            term.data_ready.clear()
            while term.pending:
                chunk = bytes(term.pending[:SEND_CHUNK])
                del term.pending[:SEND_CHUNK]
                if not term.eof:
                    term.start_reading()  # room again (a no-op while reading)
                seq = term.seq
                term.seq += 1
                term.output_bytes += len(chunk)
                await self.notify(
                    methods.TERM_OUTPUT,
                    {
                        "term_id": term.term_id,
                        "seq": seq,
                        "data": base64.b64encode(chunk).decode("ascii"),
                    },
                )
            if term.eof:
                return

    async def _supervise(self, term: Terminal) -> None:
        assert term.pump is not None
        try:
            await term.proc.wait()
            await self._drain(term)
        finally:
            term.close_master()
            code = term.proc.returncode
            signum = -code if code is not None and code < 0 else None
            result = {
                "term_id": term.term_id,
                "exit_code": (128 + signum) if signum else code,
                "signal": signum,
                "closed": term.closed,
                "killed": term.killed,
                "output_bytes": term.output_bytes,
                "duration_ms": int((time.monotonic() - term.started) * 1000),
            }
            term.result = result
            self.running.pop(term.term_id, None)
            term.done.set()
            await self.notify(methods.TERM_EXIT, result)

    async def _drain(self, term: Terminal) -> None:
        """The program exited: send the rest of its output. Processes of its session that
        still hold the terminal are killed (``killed``); output waiting for a slow host is
        not a reason to cut it short; a terminal still held after that is let go."""
        pump = term.pump
        assert pump is not None
        unheld = 0
        while True:
            done, _ = await asyncio.wait([pump], timeout=DRAIN_GRACE_S)
            if done:
                return
            if not (term.reading or term.eof or term.master_closed):
                continue  # paused while the host takes what was read: progress, not a holder
            if not term.killed and len(session_members(term.pid)) > 0:
                term.killed = True  # processes it left behind: the session ends with it
                signal_session(term.pid, signal.SIGKILL)
                continue
            unheld += 1
            if unheld >= DRAIN_ROUNDS:
                break  # held by something outside the session: stop reading, send what we have
        term.close_master()
        done, _ = await asyncio.wait([pump], timeout=DRAIN_GRACE_S * DRAIN_ROUNDS)
        if not done:
            pump.cancel()

    # -- what the host asks -------------------------------------------------------------------

    def _get(self, term_id: str) -> Terminal:
        term = self.running.get(term_id)
        if term is None or term.result is not None:
            raise GuestError("unknown_exec", "no open terminal %r in this VM" % term_id)
        return term

    async def input(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(TermInput, params)
        term = self._get(request.term_id)
        data = base64.b64decode(request.data)
        async with term.input_lock:  # concurrent calls must not interleave their bytes
            view = memoryview(data)
            while view:
                if term.master_closed:  # ended while waiting: its descriptor may be reused
                    raise GuestError("stdin_closed", "terminal %r has ended" % term.term_id)
                try:
                    written = os.write(term.master, view)
                except (BlockingIOError, InterruptedError):
                    await self._until_writable(term)
                    continue
                except OSError:
                    raise GuestError(
                        "stdin_closed", "terminal %r has ended" % term.term_id
                    ) from None
                view = view[written:]
        return {"term_id": term.term_id, "written": len(data)}

    async def _until_writable(self, term: Terminal) -> None:
        if term.master_closed:
            raise GuestError("stdin_closed", "terminal %r has ended" % term.term_id)
        loop = asyncio.get_event_loop()
        ready: "asyncio.Future[None]" = loop.create_future()
        term.writable = ready

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(term.master, writable)
        try:
            await asyncio.wait_for(asyncio.shield(ready), INPUT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise GuestError(
                "resource_exhausted",
                "the program in terminal %r has not read its input for %gs; its input buffer "
                "is full (press ctrl-c, or close the terminal)" % (term.term_id, INPUT_TIMEOUT_S),
            ) from None
        finally:
            term.writable = None
            if not term.master_closed:
                loop.remove_writer(term.master)

    async def resize(self, params: Dict[str, Any]) -> Dict[str, Any]:
        request = parse(TermResize, params)
        term = self._get(request.term_id)
        for name, value in (("cols", request.cols), ("rows", request.rows)):
            if not 1 <= value <= MAX_SIZE:
                raise InvalidParams("%s must be between 1 and %d" % (name, MAX_SIZE))
        _set_size(term.master, request.cols, request.rows)
        term.cols, term.rows = request.cols, request.rows
        try:
            os.killpg(os.tcgetpgrp(term.master), signal.SIGWINCH)
        except OSError:
            pass  # no foreground process group (it is exiting): nobody to redraw
        return {"term_id": term.term_id, "cols": term.cols, "rows": term.rows}

    async def close(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """Hang the session up, kill what is left after ``grace_s``; answer with the exit."""
        request = parse(TermClose, params)
        term = self.running.get(request.term_id)
        if term is None:
            raise GuestError("unknown_exec", "no open terminal %r in this VM" % request.term_id)
        grace = min(max(request.grace_s, 0.0), MAX_CLOSE_GRACE_S)
        term.closed = True
        term.hang_up()
        try:
            await asyncio.wait_for(asyncio.shield(term.done.wait()), grace)
        except asyncio.TimeoutError:
            term.killed = True
            term.hang_up(signal.SIGKILL)
            await asyncio.shield(term.done.wait())
        assert term.result is not None
        return dict(term.result)

    async def list(self, params: Dict[str, Any]) -> Dict[str, Any]:
        parse(Empty, params)
        return {"terminals": [term.info() for term in self.running.values()]}

    def kill_all(self) -> None:
        """The session that opened them is over: hang every terminal up and kill it now."""
        for term in list(self.running.values()):
            term.closed = term.killed = True
            term.hang_up()
            term.hang_up(signal.SIGKILL)


def _spawn_error(err: BaseException, program: str) -> BaseException:
    if isinstance(err, FileNotFoundError):
        return GuestError("command_not_found", "%r was not found in the VM" % program)
    if isinstance(err, PermissionError):
        return GuestError("permission_denied", "%r is not executable" % program)
    if isinstance(err, BlockingIOError):
        return GuestError(
            "resource_exhausted",
            "cannot start the terminal: the VM has reached its process limit; end some "
            "processes, or stop_project and start_project to restart the VM",
        )
    if isinstance(err, OSError):
        return GuestError("io_error", "cannot open a terminal in the VM: %s" % err)
    return err
