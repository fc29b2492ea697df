"""``GuestClient``: the host's side of the guest protocol over any anyio byte stream.

One client serves many concurrent calls on one channel: requests carry ids, a reader task routes
answers back to their callers, ``exec.output``/``exec.exit`` notifications to the
:class:`ExecHandle` that started the command and ``term.output``/``term.exit`` to the
:class:`~guest_runtime.terminal.TerminalHandle` of the terminal. When the channel ends, every
waiting call, running execution and open terminal fails with :class:`GuestUnreachable`.

Only what belongs to this channel is routed: an answer to an id it never sent, a notification
for an execution or terminal it did not start (or that already ended), output out of its
``seq`` order, are counted in ``strays``, logged, and dropped. (The guest keeps commands off the
channel; this is the host not taking a stray message's word for anything.)
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import nullcontext
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from guest_runtime.agent import methods
from guest_runtime.errors import (
    GuestProtocolError,
    GuestUnreachable,
    guest_error_from_wire,
)
from guest_runtime.protocol import (
    PROTOCOL_VERSION,
    ExecExit,
    ExecOutput,
    FileData,
    FileEdit,
    GuestInfo,
    GuestStats,
    ListResult,
    SearchResult,
    StatResult,
    TermExit,
    TermOutput,
    UsageResult,
    WriteResult,
)
from guest_runtime.terminal import TerminalHandle

__all__ = ["ExecEvent", "ExecHandle", "GuestClient", "TerminalHandle"]

# A 64 MiB file read travels as ~86 MiB of base64 in one line.
DEFAULT_MAX_LINE_BYTES = 96 * 1024 * 1024
# No single request should take the guest longer (searching or measuring a huge workspace).
DEFAULT_CALL_TIMEOUT_S = 300.0

ExecEvent = ExecOutput | ExecExit

log = logging.getLogger("projectvm.guest")

# Stray messages logged one by one; past this, every LOG_STRAYS_EVERY-th only.
LOG_STRAYS_FIRST = 10
LOG_STRAYS_EVERY = 1000


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: dict[str, Any] = {}
        self.error: BaseException | None = None


class ExecHandle:
    """A command started in the guest: its output events, its stdin, and its signals."""

    def __init__(self, client: GuestClient, exec_id: str) -> None:
        self.client = client
        self.exec_id = exec_id
        self.exit: ExecExit | None = None
        # Unbounded on purpose: the guest caps each execution's output, so this is bounded too,
        # and a slow consumer must never stall the reader that serves every other call.
        self._queue: deque[ExecEvent] = deque()
        self._lost: GuestUnreachable | None = None
        self._arrived = anyio.Event()
        self.next_seq = 0  # the agent numbers each execution's output 0, 1, 2, ...

    def _deliver(self, event: ExecEvent | GuestUnreachable) -> None:
        if isinstance(event, GuestUnreachable):
            self._lost = event
        else:
            self._queue.append(event)
        self._arrived.set()

    async def events(self) -> AsyncIterator[ExecEvent]:
        """Output chunks in ``seq`` order, then the exit; raises if the channel is lost first."""
        while True:
            while self._queue:
                event = self._queue.popleft()
                if isinstance(event, ExecExit):
                    self.exit = event
                    yield event
                    return
                yield event
            if self._lost is not None:
                raise self._lost
            arrived = self._arrived = anyio.Event()
            await arrived.wait()

    async def write_stdin(self, data: bytes, *, eof: bool = False) -> None:
        await self.client.request(
            methods.EXEC_STDIN,
            methods.ExecStdin(self.exec_id, base64.b64encode(data).decode(), eof),
        )

    async def signal(self, signal: str = "KILL") -> None:
        await self.client.request(methods.EXEC_SIGNAL, methods.ExecSignal(self.exec_id, signal))


class GuestClient:
    """JSON-RPC client for one channel to a guest agent; use as ``async with``."""

    def __init__(
        self, stream: anyio.abc.ByteStream, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._max_line_bytes = max_line_bytes
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, _Pending] = {}
        self.strays = 0
        self._execs: dict[str, ExecHandle] = {}
        self._terminals: dict[str, TerminalHandle] = {}
        self._write_lock = anyio.Lock()
        self._closed = anyio.Event()
        self._close_reason = "the channel to the guest agent is not open"
        self._task_group: anyio.abc.TaskGroup | None = None
        self.info: GuestInfo | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._read_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._task_group is not None
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        self._shutdown("the channel to the guest agent was closed by the host")
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- transport ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the guest agent closed the channel (the VM or sandbox stopped or crashed)"
        try:
            while True:
                line = await self._reader.receive_until(b"\n", self._max_line_bytes)
                if line.strip():
                    self._dispatch(line)
        except anyio.IncompleteRead:
            pass
        except anyio.DelimiterNotFound:
            reason = f"the guest agent sent a message over {self._max_line_bytes} bytes"
        except GuestProtocolError as err:
            reason = str(err)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
            reason = f"the channel to the guest agent broke ({err or type(err).__name__})"
        finally:
            self._shutdown(reason)
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._close_reason = reason
        self._closed.set()
        for pending in self._pending.values():
            pending.error = GuestUnreachable(reason)
            pending.done.set()
        for handle in self._execs.values():
            handle._deliver(GuestUnreachable(reason))
        self._execs.clear()
        for terminal in self._terminals.values():
            terminal._deliver(GuestUnreachable(reason))
        self._terminals.clear()

    def _dispatch(self, line: bytes) -> None:
        """Route one message. Anything malformed closes this channel, and only this channel:
        what comes from a VM is untrusted."""
        try:
            self._route(line)
        except GuestProtocolError:
            raise
        except Exception as err:
            raise GuestProtocolError(
                f"the guest sent a malformed message ({type(err).__name__}: {err}): {line[:80]!r}"
            ) from err

    def _route(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            raise GuestProtocolError(
                f"the guest channel carried something that is not JSON: {line[:80]!r}"
            ) from None
        if not isinstance(message, dict):
            raise GuestProtocolError(f"the guest sent a non-object message: {line[:80]!r}")
        if "method" in message:
            params = message.get("params")
            if not isinstance(params, dict):
                raise GuestProtocolError(f"notification params are not an object: {params!r}")
            self._on_notification(str(message["method"]), params)
            return
        request_id = message.get("id")
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if pending is None:
            if request_id is None and "error" in message:
                log.warning("the guest agent reported an error of no request: %s", line[:200])
            elif not (isinstance(request_id, int) and 0 < request_id <= self._last_id):
                self._stray("an answer to a request this channel never sent", line)
            return  # else: an answer to a call its caller gave up on
        if "error" in message:
            pending.error = guest_error_from_wire(message["error"])
        else:
            result = message.get("result")
            pending.result = result if isinstance(result, dict) else {}
        pending.done.set()

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method in (methods.TERM_OUTPUT, methods.TERM_EXIT):
            self._on_terminal(method, params)
            return
        handle = self._execs.get(str(params.get("exec_id")))
        if handle is None:
            self._stray(f"{method} for an execution this channel is not running", repr(params))
            return
        if method == methods.EXEC_OUTPUT:
            output = ExecOutput.from_wire(params)
            if output.seq != handle.next_seq:
                self._stray(f"output out of order (expected seq {handle.next_seq})", repr(params))
                return
            handle.next_seq += 1
            handle._deliver(output)
        elif method == methods.EXEC_EXIT:
            self._execs.pop(handle.exec_id, None)
            handle._deliver(ExecExit.model_validate(params))
        else:
            self._stray(f"an unknown notification {method!r}", repr(params))

    def _stray(self, what: str, message: bytes | str) -> None:
        """Count and log a message that belongs to nothing this channel started; never route
        it (a command that reached the channel could otherwise forge another's results)."""
        self.strays += 1
        if self.strays <= LOG_STRAYS_FIRST or self.strays % LOG_STRAYS_EVERY == 0:
            excerpt = message[:200]
            log.warning(
                "dropped a stray message from the guest (%d so far): %s: %r",
                self.strays,
                what,
                excerpt,
            )

    def _on_terminal(self, method: str, params: dict[str, Any]) -> None:
        terminal = self._terminals.get(str(params.get("term_id")))
        if terminal is None:
            self._stray(f"{method} for a terminal this channel has not open", repr(params))
            return
        if method == methods.TERM_OUTPUT:
            output = TermOutput.from_wire(params)
            if output.seq != terminal.next_seq:
                expected = f"expected seq {terminal.next_seq}"
                self._stray(f"terminal output out of order ({expected})", repr(params))
                return
            terminal.next_seq += 1
            terminal._deliver(output)
        else:
            self._terminals.pop(terminal.term_id, None)
            terminal._deliver(TermExit.model_validate(params))

    async def request(
        self, method: str, params: object, *, timeout: float | None = DEFAULT_CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send ``method`` with a request dataclass of :mod:`guest_runtime.agent.methods`."""
        if not isinstance(params, methods.PARAMS[method]):
            raise TypeError(f"{method} takes {methods.PARAMS[method].__name__}")
        return await self.call(method, methods.to_params(params), timeout=timeout)

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = DEFAULT_CALL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one request and wait for its answer; guest errors raise :class:`GuestError`.

        A call the guest does not answer within ``timeout`` seconds fails with
        :class:`GuestUnreachable` (the VM is overloaded or stuck), so no caller waits forever.
        """
        if self._closed.is_set():
            raise GuestUnreachable(self._close_reason)
        request_id = next(self._ids)
        self._last_id = request_id
        pending = _Pending()
        self._pending[request_id] = pending
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            async with self._write_lock:
                try:
                    await self._stream.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
                    self._shutdown(f"the channel to the guest agent broke ({err})")
                    raise GuestUnreachable(self._close_reason) from err
            try:
                with anyio.fail_after(timeout) if timeout is not None else nullcontext():
                    await pending.done.wait()
            except TimeoutError:
                raise GuestUnreachable(
                    f"the guest agent did not answer {method} within {timeout:g}s; the VM may be "
                    "overloaded or stuck (stop_project and start_project restart it)"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    # -- typed calls --------------------------------------------------------------------------

    async def hello(self) -> GuestInfo:
        try:
            info = GuestInfo.model_validate(
                await self.request(methods.HELLO, methods.Empty(), timeout=60)
            )
        except ValueError as err:
            raise GuestProtocolError(f"the guest's hello is malformed: {err}") from err
        if info.protocol_version != PROTOCOL_VERSION:
            raise GuestProtocolError(
                f"the guest agent speaks protocol {info.protocol_version}, the host "
                f"{PROTOCOL_VERSION}; restart the project so the current agent is injected"
            )
        self.info = info
        return info

    async def start_exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        stdin_open: bool = False,
        timeout_s: float | None = None,
        output_limit: int | None = None,
        tail_limit: int | None = None,
        fsize_limit: int | None = None,
        exec_id: str | None = None,
    ) -> ExecHandle:
        """Start a command; read its output from :meth:`ExecHandle.events`."""
        handle = ExecHandle(self, exec_id or uuid.uuid4().hex)
        # Registered before the request: output can arrive before the answer to exec.start.
        self._execs[handle.exec_id] = handle
        request = methods.ExecStart(
            command=command if isinstance(command, str) else list(command),
            exec_id=handle.exec_id,
            cwd=cwd,
            env=dict(env) if env else None,
            stdin=base64.b64encode(stdin).decode() if stdin is not None else None,
            stdin_open=stdin_open,
            timeout_s=timeout_s,
            output_limit=output_limit,
            tail_limit=tail_limit,
            fsize_limit=fsize_limit,
        )
        try:
            await self.request(methods.EXEC_START, request)
        except BaseException:
            self._execs.pop(handle.exec_id, None)
            raise
        return handle

    async def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        fsize_limit: int | None = None,
        term_id: str | None = None,
    ) -> TerminalHandle:
        """Open a terminal running ``command`` (None: the login shell); read its output from
        :meth:`TerminalHandle.events`."""
        handle = TerminalHandle(self, term_id or uuid.uuid4().hex)
        # Registered before the request: output can arrive before the answer to term.open.
        self._terminals[handle.term_id] = handle
        request = methods.TermOpen(
            command=command if command is None or isinstance(command, str) else list(command),
            term_id=handle.term_id,
            cwd=cwd,
            env=dict(env) if env else None,
            cols=cols,
            rows=rows,
            fsize_limit=fsize_limit,
        )
        try:
            opened = await self.request(methods.TERM_OPEN, request)
        except BaseException:
            self._terminals.pop(handle.term_id, None)
            raise
        handle.pid = int(opened.get("pid", 0))
        argv = opened.get("argv")
        handle.argv = [str(arg) for arg in argv] if isinstance(argv, list) else []
        return handle

    async def read_file(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        line_offset: int | None = None,
        line_limit: int | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        request = methods.FsRead(path, offset, length, line_offset, line_limit, max_bytes)
        return FileData.from_wire(await self.request(methods.FS_READ, request))

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        if_match: str | None = None,
        create_parents: bool = True,
        append: bool = False,
        mode: int | None = None,
    ) -> WriteResult:
        request = methods.FsWrite(
            path, base64.b64encode(data).decode(), if_match, create_parents, append, mode
        )
        return WriteResult.model_validate(await self.request(methods.FS_WRITE, request))

    async def edit_file(
        self,
        path: str,
        edits: Sequence[methods.TextEdit],
        *,
        if_match: str | None = None,
        dry_run: bool = False,
        max_diff_bytes: int | None = None,
        max_file_bytes: int | None = None,
        max_growth_bytes: int | None = None,
    ) -> FileEdit:
        """Exact-text edits done in the guest, all or none, with a (bounded) diff."""
        request = methods.FsEdit(
            path,
            list(edits),
            if_match,
            dry_run,
            max_diff_bytes,
            max_file_bytes,
            max_growth_bytes,
        )
        return FileEdit.model_validate(await self.request(methods.FS_EDIT, request))

    async def stat(self, path: str, *, sha256: bool = False, follow: bool = True) -> StatResult:
        result = await self.request(methods.FS_STAT, methods.FsStat(path, sha256, follow))
        return StatResult.model_validate(result)

    async def list_dir(
        self,
        path: str = ".",
        *,
        recursive: bool = False,
        max_entries: int = 1000,
        include_hidden: bool = True,
    ) -> ListResult:
        request = methods.FsList(path, recursive, max_entries, include_hidden)
        return ListResult.model_validate(await self.request(methods.FS_LIST, request))

    async def mkdir(self, path: str, *, parents: bool = True) -> bool:
        result = await self.request(methods.FS_MKDIR, methods.FsMkdir(path, parents))
        return bool(result.get("created"))

    async def move(
        self, source: str, destination: str, *, overwrite: bool = False
    ) -> tuple[str, str]:
        """Move within the workspace; returns the (source, destination) as resolved."""
        result = await self.request(methods.FS_MOVE, methods.FsMove(source, destination, overwrite))
        return str(result.get("source", source)), str(result.get("destination", destination))

    async def remove(
        self,
        path: str,
        *,
        recursive: bool = False,
        missing_ok: bool = False,
        if_match: str | None = None,
    ) -> tuple[bool, str]:
        """Remove a path; returns whether something was removed, and the path as resolved."""
        request = methods.FsRemove(path, recursive, missing_ok, if_match)
        result = await self.request(methods.FS_REMOVE, request)
        return bool(result.get("removed")), str(result.get("path", path))

    async def search(
        self,
        pattern: str = "",
        *,
        path: str = ".",
        regex: bool = False,
        ignore_case: bool = False,
        glob: str | None = None,
        max_results: int = 200,
        timeout_s: float | None = None,
    ) -> SearchResult:
        """Search in the guest (a child process there, killed past ``timeout_s``: 30 s)."""
        request = methods.FsSearch(pattern, path, regex, ignore_case, glob, max_results, timeout_s)
        return SearchResult.model_validate(await self.request(methods.FS_SEARCH, request))

    async def usage(self, *, max_age_s: float | None = None) -> UsageResult:
        """Workspace usage; a walked count up to ``max_age_s`` old will do."""
        request = methods.FsUsage(max_age_s=max_age_s)
        return UsageResult.model_validate(await self.request(methods.FS_USAGE, request))

    async def stats(self) -> GuestStats:
        return GuestStats.model_validate(await self.request(methods.SYSTEM_STATS, methods.Empty()))
