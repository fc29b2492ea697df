"""Interactive terminals in a project: opened, typed into, watched, resized and closed.

A terminal is an execution (``kind`` terminal): its row is written when it is opened (or
queued: it takes one of the project's execution slots, under the queue's fairness rules) and
updated when it starts and when it ends, however it ends, each time with its event; its
command is the program or the login shell it ran, its output the screen it ended with.

Who may do what follows commands: read_write members open terminals; only the opener or an
admin types into, resizes or closes one; any member may watch. Typing is activity; an open
terminal by itself is not, so an idle one lets the project sleep (and is closed then, with
the reason), and one left without input for its ``idle_timeout_s`` is closed. Every terminal
runs as a task of the service, so it outlives the request that opened it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import shlex
import time
from collections.abc import Iterable

import anyio
import anyio.abc

from guest_runtime.agent import methods
from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestError, GuestUnreachable, UnknownExecution
from guest_runtime.protocol import TermExit, TermOutput
from guest_runtime.terminal import TerminalHandle
from server.core.access import Grant
from server.core.caller import Caller
from server.core.execution_ends import duration_ms, record_end
from server.core.gate import Gate
from server.core.ids import new_id
from server.core.journal import Change, Journal
from server.core.lifecycle import Lifecycle
from server.core.live_terminal import LiveTerminal, complete_utf8, readable_text
from server.core.liveness import this_server_id
from server.core.queue import Ticket
from server.core.requests import (
    CloseTerminal,
    ListTerminals,
    OpenTerminal,
    ResizeTerminal,
    TerminalRead,
    TerminalWrite,
)
from server.core.results import TerminalInfo, TerminalList, TerminalView, TerminalWritten
from server.core.runtime import Runtime, Runtimes
from server.core.storage import StorageGuard
from server.core.terminal_keys import key_bytes, needs_cursor_mode
from server.core.wait_patterns import WaitPattern
from server.domain.config import Limits
from server.domain.errors import Conflict, InvalidInput, NotFound
from server.domain.events import ExecutionFinished, ExecutionQueued, ExecutionStarted
from server.domain.models import Execution, ExecutionStatus, Project
from server.store import Store, utcnow

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "Terminals"]

log = logging.getLogger("projectvm.terminals")

DEFAULT_IDLE_TIMEOUT_S = 1800.0
# After the hang-up, how long programs get before what is left is killed.
CLOSE_GRACE_S = 2.0
CLOSE_WAIT_S = 30.0
MAX_INPUT_BYTES = 64 * 1024
# Recorded for a terminal without a command until it opens (then: the shell it runs).
LOGIN_SHELL = "login shell"


class Terminals:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        gate: Gate,
        lifecycle: Lifecycle,
        runtimes: Runtimes,
        storage: StorageGuard,
        limits: Limits,
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        self._store = store
        self._journal = journal
        self._gate = gate
        self._lifecycle = lifecycle
        self._runtimes = runtimes
        self._storage = storage
        self._limits = limits
        self._task_group = task_group

    # -- opening ------------------------------------------------------------------------------

    async def open(self, caller: Caller, request: OpenTerminal) -> TerminalInfo:
        """Open a terminal at once when a slot is free, else queue it (it opens in turn)."""
        grant = await self._gate.admit(caller, request.project_id)
        policy = self._gate.policy
        if request.command is not None and not request.command.strip():
            raise InvalidInput(
                "command is empty; leave it out for the login shell, or name a program such as "
                "'python3'"
            )
        policy.check_terminal(grant.project, request.command)
        idle = request.idle_timeout_s or DEFAULT_IDLE_TIMEOUT_S
        if idle > self._limits.max_timeout_s:
            raise InvalidInput(
                f"idle_timeout_s must be at most {self._limits.max_timeout_s:g} seconds"
            )
        env = policy.command_environment(grant.project, request.env)
        project = await self._lifecycle.ensure_awake(grant.project, caller.report)
        runtime = self._runtimes.sized(project)
        now = utcnow()
        execution = Execution(
            execution_id=new_id("exe"),
            project_id=project.project_id,
            agent_id=caller.agent_id,
            command=request.command or LOGIN_SHELL,
            kind="terminal",
            cwd=request.cwd,
            status=ExecutionStatus.QUEUED,
            queued_at=now,
        )
        live = LiveTerminal(execution, request.cols, request.rows, idle)
        _check_share(project, runtime.terminals.values(), caller.agent_id)
        live.ticket = Ticket(execution.execution_id, caller.agent_id)
        # Counted from here (no await since the check), so concurrent opens see each other.
        runtime.terminals[execution.execution_id] = live
        runtime.queue.submit(live.ticket)
        try:
            if live.ticket.granted.is_set():
                await self._open_now(project, live, request, env)
            else:
                await self._record_queued(live)
        except BaseException:
            runtime.terminals.pop(execution.execution_id, None)
            runtime.queue.withdraw(live.ticket)
            runtime.queue.release(live.ticket)
            raise
        info = self._info(live, runtime)
        self._task_group.start_soon(self._run, project, live, request, env)
        return info

    async def _start(
        self, project: Project, live: LiveTerminal, request: OpenTerminal, env: dict[str, str]
    ) -> str:
        """Open the PTY in the VM; returns the command to record (the shell, when none)."""
        client = await self._lifecycle.client(project)
        _require_terminals(client, project)
        file_limit = await self._storage.file_size_limit(project, client)
        # Shielded: a caller that gives up while the guest opens it must not leave a terminal
        # in the VM that nobody knows of (once known, giving up closes it).
        with anyio.CancelScope(shield=True):
            handle = await client.open_terminal(
                request.command,
                cols=live.cols,
                rows=live.rows,
                cwd=request.cwd,
                env=env,
                fsize_limit=file_limit,
                term_id=live.execution.execution_id,
            )
        live.handle = handle
        return request.command or shlex.join(handle.argv) or LOGIN_SHELL

    async def _open_now(
        self, project: Project, live: LiveTerminal, request: OpenTerminal, env: dict[str, str]
    ) -> None:
        """A slot is free: open the PTY, then record it queued and started in one commit (a
        terminal that could not open is recorded as failed, and the caller told why)."""
        try:
            command = await self._start(project, live, request, env)
        except Exception as err:
            await self._record_failed_open(live, str(err))
            raise
        started = utcnow()
        live.mark_started(started, 0, command)
        try:
            async with self._journal.change() as change:
                await change.store.executions.insert(live.execution, this_server_id())
                await self._record_events(change, live, started=True)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(GuestError, GuestUnreachable):
                assert live.handle is not None
                await live.handle.close(grace_s=0)
            raise

    async def _record_queued(self, live: LiveTerminal) -> None:
        async with self._journal.change() as change:
            await change.store.executions.insert(live.execution, this_server_id())
            await self._record_events(change, live, started=False)

    @staticmethod
    async def _record_events(change: Change, live: LiveTerminal, *, started: bool) -> None:
        execution = live.execution
        await change.record(
            execution.project_id,
            execution.agent_id,
            ExecutionQueued(
                execution_id=execution.execution_id, command=execution.command[:500], terminal=True
            ),
        )
        if started:
            await change.record(
                execution.project_id,
                execution.agent_id,
                ExecutionStarted(execution_id=execution.execution_id, queued_ms=0),
            )

    async def _record_failed_open(self, live: LiveTerminal, reason: str) -> None:
        now = utcnow()
        failed = live.execution.model_copy(
            update={
                "status": ExecutionStatus.FAILED,
                "reason": reason,
                "started_at": now,
                "completed_at": now,
                "duration_ms": 0,
                "queued_ms": 0,
            }
        )
        with anyio.CancelScope(shield=True):
            async with self._journal.change() as change:
                await change.store.executions.insert(failed, this_server_id())
                await change.store.executions.finish(failed)
                await self._record_events(change, live, started=False)
                await change.record(
                    failed.project_id,
                    failed.agent_id,
                    ExecutionFinished(
                        execution_id=failed.execution_id,
                        status=failed.status,
                        exit_code=None,
                        duration_ms=0,
                        reason=reason,
                    ),
                )
        live.finish(failed)

    # -- while it is open ---------------------------------------------------------------------

    async def _run(
        self, project: Project, live: LiveTerminal, request: OpenTerminal, env: dict[str, str]
    ) -> None:
        """Wait for a slot if needed, follow the terminal to its end, record the end; whatever
        happens, the row ends in a final state and the slot is freed. Nothing escapes: this
        runs in the service's task group."""
        runtime = self._runtimes.of(project.project_id)
        assert live.ticket is not None
        try:
            if live.handle is None:
                with live.wait_scope:
                    await live.ticket.granted.wait()
                if not live.ticket.granted.is_set() or live.abort_reason is not None:
                    reason = live.abort_reason or "closed before it opened"
                    await self._finish(live, live.abort_status, reason)
                    return
                if not await self._open_queued(project, live, request, env):
                    return
            await self._follow(project, live)
        except Exception as err:
            log.exception("terminal %s failed inside the server", live.execution.execution_id)
            if not live.finished.is_set():
                await self._finish(live, ExecutionStatus.FAILED, f"internal error: {err}")
        finally:
            runtime.queue.release(live.ticket)
            runtime.terminals.pop(live.execution.execution_id, None)
            runtime.recent_terminals.append(live)
            self._storage.forget(project.project_id)
            if not live.finished.is_set():  # only when torn down by the server shutting down
                with anyio.CancelScope(shield=True):
                    await self._finish(
                        live, ExecutionStatus.INTERRUPTED, "the server stopped while it was open"
                    )

    async def _open_queued(
        self, project: Project, live: LiveTerminal, request: OpenTerminal, env: dict[str, str]
    ) -> bool:
        """Its turn came: open the PTY and record the start; False if it could not open."""
        try:
            command = await self._start(project, live, request, env)
        except (GuestError, GuestUnreachable, Conflict) as err:
            await self._finish(live, ExecutionStatus.FAILED, str(err))
            return False
        started = utcnow()
        queued_at = live.execution.queued_at or started
        queued_ms = int((started - queued_at).total_seconds() * 1000)
        execution = live.execution
        async with self._journal.change() as change:
            await change.store.executions.mark_started(
                execution.execution_id, started, queued_ms, command
            )
            await change.record(
                execution.project_id,
                execution.agent_id,
                ExecutionStarted(execution_id=execution.execution_id, queued_ms=queued_ms),
            )
        live.mark_started(started, queued_ms, command)
        if live.abort_reason is not None:  # closed while it was being opened
            assert live.handle is not None
            with contextlib.suppress(GuestError, GuestUnreachable):
                await live.handle.close(grace_s=0)
        return True

    async def _follow(self, project: Project, live: LiveTerminal) -> None:
        """Take its output until it exits; close it once it has been idle too long."""
        handle = live.handle
        assert handle is not None
        status, reason = ExecutionStatus.COMPLETED, None
        try:
            while True:
                idle_for = time.monotonic() - live.last_input
                if idle_for >= live.idle_timeout_s and live.abort_reason is None:
                    live.abort_reason = (
                        f"closed after {live.idle_timeout_s:g}s without input (idle_timeout_s)"
                    )
                    self._task_group.start_soon(self._hang_up, live)
                # Once it is being closed, only its end is waited for.
                closing = live.abort_reason is not None
                timeout = math.inf if closing else live.idle_timeout_s - idle_for + 0.01
                with anyio.move_on_after(timeout):
                    event = await handle.receive()
                    if isinstance(event, TermOutput):
                        live.add_output(event.data, event.skipped)
                        continue
                    live.exit = event
                    break
            status, reason = self._exit_status(project, live, event)
        except GuestUnreachable as err:
            stopping = self._runtimes.of(project.project_id).stopping
            if live.abort_reason is not None and live.abort_status == ExecutionStatus.KILLED:
                status, reason = ExecutionStatus.KILLED, live.abort_reason
            elif stopping:
                status, reason = ExecutionStatus.KILLED, stopping
            else:
                status, reason = (
                    ExecutionStatus.FAILED,
                    f"the VM went away while it was open: {err}",
                )
        await self._finish(live, status, reason)

    @staticmethod
    async def _hang_up(live: LiveTerminal) -> None:
        assert live.handle is not None
        with contextlib.suppress(GuestError, GuestUnreachable):
            await live.handle.close(grace_s=CLOSE_GRACE_S)

    def _exit_status(
        self, project: Project, live: LiveTerminal, event: TermExit
    ) -> tuple[ExecutionStatus, str | None]:
        if event.closed and live.abort_reason is not None:
            return live.abort_status, live.abort_reason
        if event.closed:
            stopping = self._runtimes.of(project.project_id).stopping
            return ExecutionStatus.KILLED, stopping or "the channel to the VM was closed"
        return ExecutionStatus.COMPLETED, None

    async def _finish(
        self, live: LiveTerminal, status: ExecutionStatus, reason: str | None
    ) -> None:
        exit_info = live.exit
        completed = utcnow()
        started = live.execution.started_at
        screen = (await live.snapshot()).text if live.execution.started_at else ""
        finished = live.execution.model_copy(
            update={
                "status": status,
                "reason": reason,
                "exit_code": exit_info.exit_code if exit_info else None,
                "output": screen,
                "error_output": "",
                "completed_at": completed,
                "duration_ms": duration_ms(
                    exit_info.duration_ms if exit_info else None, started, completed
                ),
            }
        )
        await record_end(self._journal, finished)
        live.finish(finished)

    # -- what callers ask ---------------------------------------------------------------------

    async def _locate(
        self, caller: Caller, execution_id: str
    ) -> tuple[Execution, Grant, LiveTerminal | None]:
        execution = await self._store.executions.get(execution_id)
        missing = NotFound(
            f"no terminal {execution_id!r} is visible to agent {caller.agent_id!r}; "
            "list_terminals shows the open ones"
        )
        if execution is None:
            raise missing
        try:
            grant = await self._gate.admit(caller, execution.project_id)
        except NotFound:
            raise missing from None  # a stranger learns nothing, not even the project
        if execution.kind != "terminal":
            raise InvalidInput(
                f"execution {execution_id} is a command, not a terminal; follow it with "
                "read_command_output (open_terminal opens a terminal)"
            )
        runtime = self._runtimes.peek(execution.project_id)
        live = runtime.find_terminal(execution_id) if runtime else None
        return execution, grant, live

    async def write(self, caller: Caller, request: TerminalWrite) -> TerminalWritten:
        execution, grant, live = await self._locate(caller, request.execution_id)
        self._gate.policy.check_owner(
            grant, execution.agent_id, f"terminal {execution.execution_id}", "type into"
        )
        handle = self._open_handle(execution, live, "typed into")
        assert live is not None
        data = await self._input_bytes(request, live)
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidInput(
                f"the input is {len(data)} bytes, over the limit of {MAX_INPUT_BYTES}; type it "
                "in pieces, or write it to a file with write_file"
            )
        cursor = live.output.end
        live.last_input = time.monotonic()
        try:
            written = await handle.write(data)
        except UnknownExecution as err:
            raise Conflict(f"terminal {execution.execution_id} has ended: {err}") from err
        return TerminalWritten(
            execution_id=execution.execution_id, written=written, next_since=cursor
        )

    @staticmethod
    async def _input_bytes(request: TerminalWrite, live: LiveTerminal) -> bytes:
        if request.encoding == "base64":
            try:
                data = base64.b64decode(request.text, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(
                    "text is not valid base64; fix it or use encoding utf-8"
                ) from None
        else:
            # As a terminal pastes: a newline is Enter.
            data = request.text.replace("\r\n", "\n").replace("\n", "\r").encode()
        if request.keys:
            application = (
                needs_cursor_mode(request.keys) and (await live.snapshot()).application_cursor
            )
            for name in request.keys:
                data += key_bytes(name, application_cursor=application)
        return data

    @staticmethod
    def _open_handle(
        execution: Execution, live: LiveTerminal | None, action: str
    ) -> TerminalHandle:
        execution_id = execution.execution_id
        if live is None or live.finished.is_set():
            raise Conflict(
                f"terminal {execution_id} has ended ({execution.status}); open_terminal opens "
                "a new one"
            )
        if live.handle is None:
            raise Conflict(
                f"terminal {execution_id} is waiting for a free slot (queue position in "
                f"list_terminals); it can be {action} once it opens"
            )
        return live.handle

    async def read(self, caller: Caller, request: TerminalRead) -> TerminalView:
        """The screen or the output after ``since``; with ``wait_s``, wait for more first."""
        execution, grant, live = await self._locate(caller, request.execution_id)
        pattern = WaitPattern(request.wait_for) if request.wait_for is not None else None
        if live is None:
            return self._stored_view(execution, request)
        if request.wait_s > 0:
            with anyio.move_on_after(request.wait_s):
                await self._wait(live, request, pattern)
            if not await self._gate.policy.still_member(grant):
                raise NotFound(
                    f"agent {caller.agent_id!r} was removed from project {grant.project_id} "
                    "while waiting; its terminals are no longer visible to you"
                )
        return await self._view(live, request, pattern)

    async def _wait(
        self, live: LiveTerminal, request: TerminalRead, pattern: WaitPattern | None
    ) -> None:
        """Until the pattern matches, or output after ``since`` came and settled, or the end."""
        while not live.finished.is_set():
            if pattern is not None:
                if await self._matches(live, request, pattern):
                    return
            elif live.output.end > request.since:
                break
            await live.wait_for_change(request.wait_s)
        while request.settle_s > 0 and not live.finished.is_set():
            end = live.output.end
            await live.wait_for_change(request.settle_s)
            if live.output.end == end:
                return

    @staticmethod
    async def _matches(live: LiveTerminal, request: TerminalRead, pattern: WaitPattern) -> bool:
        if request.mode == "screen":
            return await pattern.found_in((await live.snapshot()).text)
        _, data = live.output.read(request.since)
        return await pattern.found_in(readable_text(data.decode(errors="replace")))

    async def _view(
        self, live: LiveTerminal, request: TerminalRead, pattern: WaitPattern | None
    ) -> TerminalView:
        execution = live.execution
        view = TerminalView(
            execution_id=execution.execution_id,
            status=execution.status,
            exit_code=execution.exit_code,
            reason=execution.reason,
            finished=live.finished.is_set(),
            cols=live.cols,
            rows=live.rows,
            next_since=live.output.end,
        )
        if pattern is not None:
            view.matched = await self._matches(live, request, pattern)
        if request.mode == "screen":
            screen = await live.snapshot()
            view.screen = screen.text
            view.cursor_row, view.cursor_col = screen.cursor
            view.alternate_screen = screen.alternate
            view.title = screen.title or None
            return view
        first, data = live.output.read(request.since)
        view.skipped = first - min(request.since, live.output.end)
        view.encoding = request.encoding
        if request.encoding == "base64":
            view.output = base64.b64encode(data).decode()
            return view
        whole = complete_utf8(data)  # a character cut at the end comes whole next time
        text = data[:whole].decode(errors="replace")
        view.output = readable_text(text) if request.encoding == "text" else text
        view.next_since = first + whole
        return view

    @staticmethod
    def _stored_view(execution: Execution, request: TerminalRead) -> TerminalView:
        """Ended long ago: only the recorded screen is left."""
        return TerminalView(
            execution_id=execution.execution_id,
            status=execution.status,
            exit_code=execution.exit_code,
            reason=execution.reason,
            finished=execution.status.finished,
            cols=0,
            rows=0,
            screen=(execution.output or "") if request.mode == "screen" else None,
            output="" if request.mode == "output" else None,
            encoding=request.encoding if request.mode == "output" else None,
            next_since=request.since,
        )

    async def resize(self, caller: Caller, request: ResizeTerminal) -> TerminalInfo:
        execution, grant, live = await self._locate(caller, request.execution_id)
        self._gate.policy.check_owner(
            grant, execution.agent_id, f"terminal {execution.execution_id}", "resize"
        )
        if live is None or live.finished.is_set():
            raise Conflict(f"terminal {execution.execution_id} has ended ({execution.status})")
        if live.handle is not None:
            try:
                await live.handle.resize(request.cols, request.rows)
            except UnknownExecution as err:
                raise Conflict(f"terminal {execution.execution_id} has ended: {err}") from err
        live.resized(request.cols, request.rows)
        return self._info(live, self._runtimes.peek(execution.project_id))

    async def close(self, caller: Caller, request: CloseTerminal) -> TerminalInfo:
        execution, grant, live = await self._locate(caller, request.execution_id)
        execution_id = execution.execution_id
        self._gate.policy.check_owner(
            grant, execution.agent_id, f"terminal {execution_id}", "close"
        )
        runtime = self._runtimes.peek(execution.project_id)
        if live is None or live.finished.is_set():
            if live is not None:
                return self._info(live, runtime)
            return _info_of(execution, 0, 0)
        reason = f"closed by {caller.agent_id}"
        if live.handle is None:
            # Still waiting for a slot (it never opens), or being opened (closed once open).
            if runtime is not None:
                live.withdraw(runtime.queue, ExecutionStatus.CANCELLED, reason)
        elif live.abort_reason is None:
            live.abort_status, live.abort_reason = ExecutionStatus.COMPLETED, reason
            await self._hang_up(live)
        with anyio.move_on_after(CLOSE_WAIT_S):
            await live.finished.wait()
        if not live.finished.is_set():
            raise GuestUnreachable(
                f"terminal {execution_id} was hung up but has not ended within "
                f"{CLOSE_WAIT_S:g}s; the VM may be stuck (stop_project ends everything in it)"
            )
        return self._info(live, runtime)

    async def list(self, caller: Caller, request: ListTerminals) -> TerminalList:
        grant = await self._gate.admit(caller, request.project_id)
        runtime = self._runtimes.peek(grant.project_id)
        terminals = list(runtime.terminals.values()) if runtime else []
        return TerminalList(
            project_id=grant.project_id,
            terminals=[self._info(live, runtime) for live in terminals],
        )

    @staticmethod
    def _info(live: LiveTerminal, runtime: Runtime | None) -> TerminalInfo:
        info = _info_of(live.execution, live.cols, live.rows)
        if runtime is not None and info.status == ExecutionStatus.QUEUED:
            info.queue_position = runtime.queue.positions().get(info.execution_id)
        return info


def _info_of(execution: Execution, cols: int, rows: int) -> TerminalInfo:
    return TerminalInfo(
        project_id=execution.project_id,
        execution_id=execution.execution_id,
        agent_id=execution.agent_id,
        command=execution.command,
        status=execution.status,
        cols=cols,
        rows=rows,
        exit_code=execution.exit_code,
        reason=execution.reason,
        queued_at=execution.queued_at,
        started_at=execution.started_at,
    )


def terminal_share(project: Project) -> int:
    """How many terminals one agent may hold open or queued in a project: half its execution
    slots (at least one), so one agent's idle terminals can never take every slot from the
    others' commands and terminals."""
    return max(1, project.settings.max_concurrent_executions // 2)


def _check_share(project: Project, terminals: Iterable[LiveTerminal], agent_id: str) -> None:
    share = terminal_share(project)
    held = sum(1 for live in terminals if live.execution.agent_id == agent_id)
    if held >= share:
        raise Conflict(
            f"agent {agent_id!r} already holds {held} terminals in project "
            f"{project.project_id}, the most one agent may (half of max_concurrent_executions "
            f"= {project.settings.max_concurrent_executions}, so slots stay for everyone); "
            "close one with close_terminal (list_terminals shows them)"
        )


def _require_terminals(client: GuestClient, project: Project) -> None:
    info = client.info
    if info is not None and methods.TERM_OPEN not in info.capabilities:
        raise Conflict(
            f"the guest agent in project {project.project_id}'s VM predates terminals; "
            "stop_project and start_project so the current agent is injected"
        )
