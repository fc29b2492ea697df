"""Commands in a project: queued fairly, run in the background, followed, fed, cancelled.

Every command runs as a task of the service, not of the request that asked for it: a caller
may wait for the end (``run``), or take the execution id and come back later (``wait_s``,
``read_output``). The execution's row is written when it is queued and updated when it starts
and when it ends, however it ends, each time with its event in the same transaction.
"""

from __future__ import annotations

import base64
import contextlib
import logging

import anyio
import anyio.abc

from guest_runtime.errors import GuestError, GuestUnreachable, StdinClosed
from server.core.access import Grant
from server.core.caller import Caller
from server.core.execution_ends import duration_ms, record_end
from server.core.gate import Gate
from server.core.ids import new_id
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.live import LiveExecution, render_output
from server.core.liveness import this_server_id
from server.core.queue import Ticket
from server.core.requests import (
    CancelExecution,
    GetExecutionHistory,
    ListExecutions,
    ReadCommandOutput,
    RunCommand,
    SendInput,
)
from server.core.results import CommandOutput, CommandResult, ExecutionHistory, ExecutionList
from server.core.runtime import Runtimes
from server.core.storage import StorageGuard
from server.domain.config import Limits
from server.domain.errors import Conflict, InvalidInput, LimitExceeded, NotFound
from server.domain.events import ExecutionFinished, ExecutionQueued, ExecutionStarted
from server.domain.models import Execution, ExecutionStatus, Project
from server.domain.operations import Operation
from server.store import Store, utcnow

__all__ = ["Executions", "decode_cursor", "encode_cursor"]

log = logging.getLogger("projectvm.executions")

# How long past its own timeout a command may go unreported before the host gives up on it.
GUEST_REPORT_GRACE_S = 30.0
PROGRESS_EVERY_S = 1.0
ABORT_WAIT_S = 30.0
HANDLE_WAIT_S = 30.0
CURSOR_PREFIX = "seq:"
# How much of a refused (oversized) command the audit log keeps.
REFUSED_COMMAND_CHARS = 1024


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith(CURSOR_PREFIX):
            raise ValueError(text)
        return int(text[len(CURSOR_PREFIX) :])
    except ValueError:
        raise InvalidInput(
            f"cursor {cursor!r} is not one this server gave out; pass next_cursor from the "
            "previous page, or omit it for the first page"
        ) from None


class Executions:
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

    # -- starting -----------------------------------------------------------------------------

    def _timeout(self, timeout_s: float | None) -> float:
        limits = self._limits
        timeout = limits.default_timeout_s if timeout_s is None else timeout_s
        if not 0 < timeout <= limits.max_timeout_s:
            raise InvalidInput(f"timeout_s must be between 0 and {limits.max_timeout_s:g} seconds")
        return timeout

    async def start(self, caller: Caller, request: RunCommand) -> LiveExecution:
        """Queue a command; it starts when the project has a free slot."""
        grant = await self._gate.admit(caller, request.project_id)
        if not request.command.strip():
            raise InvalidInput("command is empty; pass a shell command such as 'ls -la'")
        await self._check_size(caller, grant.project_id, request)
        timeout = self._timeout(request.timeout_s)
        policy = self._gate.policy
        policy.check_command(grant.project, request.command)
        env = policy.command_environment(grant.project, request.env)
        project = await self._lifecycle.ensure_awake(grant.project, caller.report)
        runtime = self._runtimes.sized(project)
        now = utcnow()
        execution_id = new_id("exe")
        ticket = Ticket(execution_id, caller.agent_id)
        runtime.queue.submit(ticket)
        # Granted at once (the usual case): queued and started are recorded in one commit.
        started = ticket.granted.is_set()
        execution = Execution(
            execution_id=execution_id,
            project_id=project.project_id,
            agent_id=caller.agent_id,
            command=request.command,
            cwd=request.cwd,
            status=ExecutionStatus.RUNNING if started else ExecutionStatus.QUEUED,
            queued_at=now,
            started_at=now if started else None,
            queued_ms=0 if started else None,
        )
        try:
            async with self._journal.change() as change:
                await change.store.executions.insert(execution, this_server_id())
                await change.record(
                    project.project_id,
                    caller.agent_id,
                    ExecutionQueued(execution_id=execution_id, command=request.command[:500]),
                )
                if started:
                    await change.record(
                        project.project_id,
                        caller.agent_id,
                        ExecutionStarted(execution_id=execution_id, queued_ms=0),
                    )
        except BaseException:
            runtime.queue.withdraw(ticket)
            runtime.queue.release(ticket)
            raise
        live = LiveExecution(execution)
        live.keep_stdin_open = request.keep_stdin_open
        live.ticket = ticket
        runtime.live[execution_id] = live
        self._task_group.start_soon(self._run, project, live, request, env, timeout)
        return live

    async def _check_size(self, caller: Caller, project_id: str, request: RunCommand) -> None:
        """Refuse a command line (with its env) or stdin past the limits; a refused command is
        recorded, truncated, so the audit log shows the attempt without storing its bulk."""
        limits = self._limits
        size = len(request.command.encode()) + sum(
            len(k.encode()) + len(v.encode()) for k, v in (request.env or {}).items()
        )
        problem = None
        if size > limits.max_command_bytes:
            problem = (
                f"the command line and its env are {size} bytes, over the limit of "
                f"{limits.max_command_bytes}; write the script to a file with write_file and "
                "run the file"
            )
        elif request.stdin is not None and len(request.stdin.encode()) > limits.max_file_bytes:
            problem = (
                f"stdin is over the limit of {limits.max_file_bytes} bytes; write it to a file "
                "and redirect it (command < file)"
            )
        if problem is None:
            return
        now = utcnow()
        shown = request.command[:REFUSED_COMMAND_CHARS]
        if len(request.command) > REFUSED_COMMAND_CHARS:
            shown += f" [... {len(request.command) - REFUSED_COMMAND_CHARS} characters omitted]"
        refused = Execution(
            execution_id=new_id("exe"),
            project_id=project_id,
            agent_id=caller.agent_id,
            command=shown,
            cwd=request.cwd,
            status=ExecutionStatus.FAILED,
            reason=f"refused: {problem}",
            queued_at=now,
            completed_at=now,
            duration_ms=0,
        )
        async with self._journal.change() as change:
            await change.store.executions.insert(refused, this_server_id())
            await change.store.executions.finish(refused)
            await change.record(
                project_id,
                caller.agent_id,
                ExecutionQueued(execution_id=refused.execution_id, command=shown[:500]),
            )
            await change.record(
                project_id,
                caller.agent_id,
                ExecutionFinished(
                    execution_id=refused.execution_id,
                    status=refused.status,
                    exit_code=None,
                    duration_ms=0,
                    reason=refused.reason,
                ),
            )
        raise LimitExceeded(problem)

    async def _run(
        self,
        project: Project,
        live: LiveExecution,
        request: RunCommand,
        env: dict[str, str],
        timeout: float,
    ) -> None:
        """Wait for a slot, run, record; whatever happens, the row ends in a final state.

        This runs in the service's task group: nothing may escape it, or every project's
        work would be cancelled with it.
        """
        runtime = self._runtimes.of(project.project_id)
        assert live.ticket is not None
        try:
            with live.wait_scope:
                await live.ticket.granted.wait()
            if live.ticket.granted.is_set() and live.abort_reason is None:
                await self._execute(project, live, request, env, timeout)
            else:
                await self._finish(live, live.abort_status, live.abort_reason or "cancelled")
        except Exception as err:
            log.exception("execution %s failed inside the server", live.execution.execution_id)
            if not live.finished.is_set():
                await self._finish(live, ExecutionStatus.FAILED, f"internal error: {err}")
        finally:
            runtime.queue.release(live.ticket)
            runtime.live.pop(live.execution.execution_id, None)
            runtime.recent.append(live)
            if not live.finished.is_set():  # only when torn down by the server shutting down
                with anyio.CancelScope(shield=True):
                    await self._finish(
                        live, ExecutionStatus.INTERRUPTED, "the server stopped while it ran"
                    )

    async def _mark_started(self, live: LiveExecution) -> None:
        started = utcnow()
        queued_at = live.execution.queued_at or started
        queued_ms = int((started - queued_at).total_seconds() * 1000)
        execution = live.execution
        async with self._journal.change() as change:
            await change.store.executions.mark_started(execution.execution_id, started, queued_ms)
            await change.record(
                execution.project_id,
                execution.agent_id,
                ExecutionStarted(execution_id=execution.execution_id, queued_ms=queued_ms),
            )
        live.mark_started(started, queued_ms)

    async def _execute(
        self,
        project: Project,
        live: LiveExecution,
        request: RunCommand,
        env: dict[str, str],
        timeout: float,
    ) -> None:
        status = ExecutionStatus.FAILED
        reason: str | None = None
        storage = self._storage
        try:
            if live.execution.status == ExecutionStatus.QUEUED:
                await self._mark_started(live)
            client = await self._lifecycle.client(project)
            file_limit = await storage.file_size_limit(project, client)
            live.handle = await client.start_exec(
                request.command,
                cwd=request.cwd,
                env=env,
                stdin=request.stdin.encode() if request.stdin is not None else None,
                stdin_open=live.keep_stdin_open,
                timeout_s=timeout,
                output_limit=self._limits.output_limit_bytes,
                tail_limit=self._limits.output_tail_bytes,
                fsize_limit=file_limit,
                exec_id=live.execution.execution_id,
            )
            live.notify()
            if live.abort_reason is not None:  # cancelled while it was being started
                with contextlib.suppress(GuestError, GuestUnreachable):
                    await live.handle.signal("KILL")
            with anyio.move_on_after(timeout + GUEST_REPORT_GRACE_S) as scope:
                async for event in live.handle.events():
                    live.add(event)
            if scope.cancelled_caught:
                reason = "the VM did not report the command's end; it may be overloaded"
            elif live.exit is not None:
                status, reason = self._exit_status(project, live)
                storage.forget(project.project_id)
                over = await storage.over_limit_after_command(project, client)
                if over is not None:
                    status, reason = ExecutionStatus.FAILED, over
                elif reason is None and live.exit.exit_code and "File too large" in live.stderr():
                    reason = (
                        f"no file may grow past max_storage_gb ({file_limit} bytes now): "
                        "free space in the workspace, or ask an admin to raise max_storage_gb"
                    )
        except GuestUnreachable as err:
            stopping = self._runtimes.of(project.project_id).stopping
            status = ExecutionStatus.KILLED if stopping else ExecutionStatus.FAILED
            reason = stopping or f"the VM went away while the command ran: {err}"
        except GuestError as err:
            reason = str(err)
            if live.handle is None:
                live.start_error = err  # a bad cwd, a missing program: the caller's mistake
        except Exception as err:  # ProjectNotRunning, driver errors: recorded, not lost
            reason = str(err)
        storage.forget(project.project_id)
        await self._finish(live, status, reason)

    def _exit_status(
        self, project: Project, live: LiveExecution
    ) -> tuple[ExecutionStatus, str | None]:
        assert live.exit is not None
        if live.exit.timed_out:
            return ExecutionStatus.TIMED_OUT, "killed after timeout_s; raise timeout_s if needed"
        if live.exit.killed:
            stopping = self._runtimes.of(project.project_id).stopping
            if stopping:
                return ExecutionStatus.KILLED, stopping
            if live.abort_reason:
                return live.abort_status, live.abort_reason
            return ExecutionStatus.CANCELLED, "killed on request"
        return ExecutionStatus.COMPLETED, None

    async def _finish(
        self, live: LiveExecution, status: ExecutionStatus, reason: str | None
    ) -> None:
        exit_info = live.exit
        completed = utcnow()
        started = live.execution.started_at
        finished = live.execution.model_copy(
            update={
                "status": status,
                "reason": reason,
                "exit_code": exit_info.exit_code if exit_info else None,
                "timed_out": bool(exit_info and exit_info.timed_out),
                "truncated": bool(exit_info and exit_info.truncated),
                "output": live.stdout(),
                "error_output": live.stderr(),
                "completed_at": completed,
                "duration_ms": duration_ms(
                    exit_info.duration_ms if exit_info else None, started, completed
                ),
            }
        )
        await record_end(self._journal, finished)
        live.finish(finished)

    # -- waiting and following ----------------------------------------------------------------

    async def run(self, caller: Caller, request: RunCommand) -> CommandResult:
        """Run a command and wait for its end, or for ``wait_s`` seconds (then: a handle).

        If the caller is cancelled while waiting, the command is killed.
        """
        if request.wait_s is not None and request.wait_s < 0:
            raise InvalidInput("wait_s must not be negative")
        live = await self.start(caller, request)
        try:
            wait = request.wait_s if request.wait_s is not None else float("inf")
            with anyio.move_on_after(wait):
                await self._follow(caller, live)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_WAIT_S):
                await self._abort(
                    live, ExecutionStatus.CANCELLED, "the caller cancelled the request"
                )
                await live.finished.wait()
            raise
        if live.start_error is not None and live.finished.is_set():
            raise live.start_error  # recorded as failed; the caller gets the error itself
        return self.result(live)

    async def _follow(self, caller: Caller, live: LiveExecution) -> None:
        while not live.finished.is_set():
            await live.wait_for_change(PROGRESS_EVERY_S)
            if not live.finished.is_set():
                await caller.report(self._progress_message(live))

    def _progress_message(self, live: LiveExecution) -> str:
        execution = live.execution
        if execution.status == ExecutionStatus.QUEUED:
            runtime = self._runtimes.peek(execution.project_id)
            position = runtime.queue.positions().get(execution.execution_id) if runtime else None
            return f"queued (position {position})" if position else "queued"
        started = execution.started_at or utcnow()
        seconds = (utcnow() - started).total_seconds()
        size = sum(len(chunk.data) for chunk in live.chunks)
        return f"running for {seconds:.0f}s, {size} bytes of output"

    @staticmethod
    def result(live: LiveExecution) -> CommandResult:
        execution = live.execution
        finished = live.finished.is_set()
        return CommandResult(
            project_id=execution.project_id,
            execution_id=execution.execution_id,
            status=execution.status,
            exit_code=execution.exit_code,
            stdout=execution.output if finished and execution.output is not None else live.stdout(),
            stderr=execution.error_output
            if finished and execution.error_output is not None
            else live.stderr(),
            timed_out=execution.timed_out,
            truncated=execution.truncated,
            duration_ms=execution.duration_ms,
            queued_ms=execution.queued_ms,
            reason=execution.reason,
            next_since=len(live.chunks),
        )

    @staticmethod
    def _command_only(execution: Execution, use: str) -> None:
        """A terminal is an execution too, but it is driven with the terminal_* tools."""
        if execution.kind == "terminal":
            raise InvalidInput(
                f"execution {execution.execution_id} is a terminal, not a command; {use}"
            )

    async def _locate(
        self, caller: Caller, execution_id: str
    ) -> tuple[Execution, Grant, LiveExecution | None]:
        execution = await self._store.executions.get(execution_id)
        missing = NotFound(
            f"no execution {execution_id!r} is visible to agent {caller.agent_id!r}; "
            "list_executions or get_execution_history show the ids"
        )
        if execution is None:
            raise missing
        try:
            grant = await self._gate.admit(caller, execution.project_id)
        except NotFound:
            raise missing from None  # a stranger learns nothing, not even the project
        runtime = self._runtimes.peek(execution.project_id)
        live = runtime.find(execution_id) if runtime else None
        return execution, grant, live

    async def read_output(self, caller: Caller, request: ReadCommandOutput) -> CommandOutput:
        """Output after cursor ``since``; with ``wait_s``, wait that long for more or the end."""
        since, wait_s = request.since, request.wait_s
        execution, grant, live = await self._locate(caller, request.execution_id)
        self._command_only(execution, "look at it with terminal_read")
        if live is None:
            # Finished long ago: only the stored record is left.
            first = since == 0
            return CommandOutput(
                execution_id=execution.execution_id,
                status=execution.status,
                exit_code=execution.exit_code,
                stdout=(execution.output or "") if first else "",
                stderr=(execution.error_output or "") if first else "",
                next_since=max(since, 1),
                finished=execution.status.finished,
                reason=execution.reason,
            )
        if wait_s > 0 and len(live.chunks) <= since and not live.finished.is_set():
            with anyio.move_on_after(wait_s):
                while len(live.chunks) <= since and not live.finished.is_set():
                    await live.wait_for_change(wait_s)
            if not await self._gate.policy.still_member(grant):
                raise NotFound(
                    f"agent {caller.agent_id!r} was removed from project {grant.project_id} "
                    "while waiting; its output is no longer visible to you"
                )
        chunks = live.chunks[since:]
        current = live.execution
        return CommandOutput(
            execution_id=execution.execution_id,
            status=current.status,
            exit_code=current.exit_code,
            stdout=render_output(chunks, "stdout"),
            stderr=render_output(chunks, "stderr"),
            next_since=since + len(chunks),
            finished=live.finished.is_set(),
            reason=current.reason,
        )

    async def send_input(self, caller: Caller, request: SendInput) -> CommandOutput:
        execution, grant, live = await self._locate(caller, request.execution_id)
        self._command_only(execution, "type into it with terminal_write")
        self._gate.policy.check_owner(
            grant, execution.agent_id, f"execution {execution.execution_id}", "send input to"
        )
        execution_id = execution.execution_id
        if live is None or live.finished.is_set():
            raise Conflict(f"execution {execution_id} has finished; its input is closed")
        if live.handle is None and live.execution.status == ExecutionStatus.RUNNING:
            # Granted a slot, being started in the VM right now: a moment away.
            with anyio.move_on_after(HANDLE_WAIT_S):
                while live.handle is None and not live.finished.is_set():
                    await live.wait_for_change(HANDLE_WAIT_S)
        if live.handle is None:
            raise Conflict(
                f"execution {execution_id} has not started yet (it is {live.execution.status}); "
                "send input once it runs"
            )
        if not live.keep_stdin_open:
            raise Conflict(
                f"execution {execution_id} was started without an open stdin; start the command "
                "with keep_stdin_open=true to send it input"
            )
        try:
            await live.handle.write_stdin(request.data.encode(), eof=request.eof)
        except StdinClosed as err:
            raise Conflict(f"the command has closed its input: {err}") from err
        return await self.read_output(
            caller.doing(Operation.READ_COMMAND_OUTPUT),
            ReadCommandOutput(execution_id=execution_id),
        )

    async def cancel(self, caller: Caller, request: CancelExecution) -> CommandResult:
        execution, grant, live = await self._locate(caller, request.execution_id)
        execution_id = execution.execution_id
        self._command_only(execution, "end it with close_terminal")
        self._gate.policy.check_owner(
            grant, execution.agent_id, f"execution {execution_id}", "cancel"
        )
        if live is None or live.finished.is_set():
            if live is not None:
                return self.result(live)
            raise Conflict(f"execution {execution_id} already finished ({execution.status})")
        await self._abort(live, ExecutionStatus.CANCELLED, f"cancelled by {caller.agent_id}")
        with anyio.move_on_after(ABORT_WAIT_S):
            await live.finished.wait()
        if not live.finished.is_set():
            raise GuestUnreachable(
                f"execution {execution_id} was told to stop but has not ended within "
                f"{ABORT_WAIT_S:g}s; the VM may be stuck (stop_project ends everything in it)"
            )
        return self.result(live)

    async def _abort(self, live: LiveExecution, status: ExecutionStatus, reason: str) -> None:
        """Stop an execution: withdraw it if still queued, kill it if running."""
        runtime = self._runtimes.peek(live.execution.project_id)
        if runtime is not None and live.withdraw(runtime.queue, status, reason):
            return
        if live.finished.is_set():
            return
        live.abort_status, live.abort_reason = status, reason
        if live.handle is not None:
            with anyio.move_on_after(ABORT_WAIT_S):
                try:
                    await live.handle.signal("KILL")
                except (GuestError, GuestUnreachable):
                    pass  # it ended meanwhile, or the VM is gone: either way it is not running

    # -- listing ------------------------------------------------------------------------------

    async def list_active(self, caller: Caller, request: ListExecutions) -> ExecutionList:
        grant = await self._gate.admit(caller, request.project_id)
        wanted = {
            "queued": [ExecutionStatus.QUEUED],
            "running": [ExecutionStatus.RUNNING],
            "active": [ExecutionStatus.QUEUED, ExecutionStatus.RUNNING],
        }[request.state]
        rows = await self._store.executions.page(
            grant.project_id,
            statuses=wanted,
            order="oldest_first",
            limit=1000,
            include_output=False,
        )
        runtime = self._runtimes.peek(grant.project_id)
        positions = runtime.queue.positions() if runtime else {}
        limit = runtime.queue.limit if runtime else None
        return ExecutionList(
            project_id=grant.project_id,
            max_concurrent_executions=limit,
            executions=sorted(
                (
                    row.model_copy(update={"queue_position": positions.get(row.execution_id)})
                    for row in rows
                ),
                key=lambda row: (row.queue_position or 0, row.seq or 0),
            ),
        )

    async def history(self, caller: Caller, request: GetExecutionHistory) -> ExecutionHistory:
        """One page of the audit log, in ``seq`` order; ``next_cursor`` reads on."""
        grant = await self._gate.admit(caller, request.project_id)
        statuses = None
        if request.status is not None:
            try:
                statuses = [ExecutionStatus(request.status)]
            except ValueError:
                raise InvalidInput(
                    f"status {request.status!r} is not one of "
                    f"{', '.join(s.value for s in ExecutionStatus)}"
                ) from None
        bound = decode_cursor(request.cursor) if request.cursor else None
        newest_first = request.order == "newest_first"
        rows = await self._store.executions.page(
            grant.project_id,
            agent_id=request.agent_id,
            statuses=statuses,
            before_seq=bound if newest_first else None,
            after_seq=None if newest_first else bound,
            order=request.order,
            limit=request.limit + 1,
            include_output=False,
        )
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        if request.include_output and rows:
            # Outputs are read only for the rows whose outputs fit the page's byte budget.
            sizes = await self._store.executions.output_sizes([r.execution_id for r in rows])
            count, cut = _fitting([sizes.get(r.execution_id, 0) for r in rows], self._limits)
            more = more or cut
            first, last = rows[0].seq, rows[count - 1].seq
            assert first is not None
            assert last is not None
            low, high = sorted((first, last))
            rows = await self._store.executions.page(
                grant.project_id,
                agent_id=request.agent_id,
                statuses=statuses,
                after_seq=low - 1,
                before_seq=high + 1,
                order=request.order,
                limit=count,
                include_output=True,
            )
        last_seq = rows[-1].seq if rows else None
        next_cursor = None
        if more and last_seq is not None:
            next_cursor = encode_cursor(last_seq)
        elif not newest_first:
            # Oldest first can always resume here later: new executions come after the last.
            next_cursor = encode_cursor(last_seq if last_seq is not None else (bound or 0))
        return ExecutionHistory(
            project_id=grant.project_id, executions=rows, next_cursor=next_cursor, has_more=more
        )


def _fitting(sizes: list[int], limits: Limits) -> tuple[int, bool]:
    """How many leading rows' outputs fit a history page (always at least one), and whether
    any were left out."""
    used = 0
    for count, size in enumerate(sizes):
        if count and used + size > limits.max_history_page_bytes:
            return count, True
        used += size
    return len(sizes), False
