"""Commands in a project: queued fairly, run in the background, followed, fed, cancelled.

Every command runs as a task of the service, not of the request that asked for it: a caller
may wait for the end (``run_command``), or take the execution id and come back later
(``wait_s``, ``read_command_output``). The execution's row is written when it is queued and
updated when it starts and when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import anyio

from guest_runtime.errors import GuestError, GuestUnreachable, StdinClosed
from server import progress
from server.errors import AccessDenied, Conflict, InvalidInput, NotFound
from server.live import LiveExecution, render_output
from server.liveness import this_server_id
from server.models import AccessLevel, Execution, ExecutionStatus, Project
from server.queue import Ticket
from server.results import CommandOutput, CommandResult, ExecutionHistory, ExecutionList
from server.store import utcnow

if TYPE_CHECKING:
    from server.service import ProjectService

__all__ = ["Executions"]

log = logging.getLogger("projectvm.executions")

# How long past its own timeout a command may go unreported before the host gives up on it.
GUEST_REPORT_GRACE_S = 30.0
PROGRESS_EVERY_S = 1.0
MAX_WAIT_S = 300.0
ABORT_WAIT_S = 30.0
HANDLE_WAIT_S = 30.0


def check_command_policy(project: Project, command: str) -> None:
    """The project's advisory allow/deny lists (shell patterns over the whole command line).

    Advisory only: a script or ``sh -c`` can run anything; the VM is the boundary.
    """
    settings = project.settings
    for pattern in settings.command_denylist:
        if fnmatch.fnmatchcase(command.strip(), pattern):
            raise AccessDenied(
                f"project {project.project_id} refuses commands matching {pattern!r} "
                "(command_denylist); an admin can change it with update_project_settings"
            )
    allowed = settings.command_allowlist
    if allowed and not any(fnmatch.fnmatchcase(command.strip(), p) for p in allowed):
        raise AccessDenied(
            f"project {project.project_id} only runs commands matching "
            f"{', '.join(repr(p) for p in allowed)} (command_allowlist); an admin can change it"
        )


class Executions:
    def __init__(self, service: ProjectService) -> None:
        self.service = service

    # -- starting -----------------------------------------------------------------------------

    def _timeout(self, timeout_s: float | None) -> float:
        limits = self.service.limits
        timeout = limits.default_timeout_s if timeout_s is None else timeout_s
        if not 0 < timeout <= limits.max_timeout_s:
            raise InvalidInput(f"timeout_s must be between 0 and {limits.max_timeout_s:g} seconds")
        return timeout

    async def start(
        self,
        agent_id: str,
        project_id: str,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
        keep_stdin_open: bool = False,
    ) -> LiveExecution:
        """Queue a command; it starts when the project has a free slot."""
        project, _ = await self.service.authorize(agent_id, project_id, AccessLevel.READ_WRITE)
        text = command if isinstance(command, str) else " ".join(command)
        if not text.strip():
            raise InvalidInput("command is empty; pass a shell command such as 'ls -la'")
        timeout = self._timeout(timeout_s)
        check_command_policy(project, text)
        project = await self.service.lifecycle.ensure_awake(project)
        runtime = self.service.runtime(project)
        now = utcnow()
        execution_id = self.service.new_id("exe")
        ticket = Ticket(execution_id, agent_id)
        runtime.queue.submit(ticket)
        # Granted at once (the usual case): queued and started are recorded in one commit.
        started = ticket.granted.is_set()
        execution = Execution(
            execution_id=execution_id,
            project_id=project_id,
            agent_id=agent_id,
            command=text,
            cwd=cwd,
            status=ExecutionStatus.RUNNING if started else ExecutionStatus.QUEUED,
            queued_at=now,
            started_at=now if started else None,
            queued_ms=0 if started else None,
        )
        try:
            await self.service.store.insert_execution(execution, this_server_id())
        except BaseException:
            runtime.queue.withdraw(ticket)
            runtime.queue.release(ticket)
            raise
        live = LiveExecution(execution)
        live.keep_stdin_open = keep_stdin_open
        live.ticket = ticket
        runtime.live[execution_id] = live
        self.service.task_group.start_soon(
            self._run, project, live, command, cwd, env, timeout, stdin
        )
        return live

    async def _run(
        self,
        project: Project,
        live: LiveExecution,
        command: str | Sequence[str],
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float,
        stdin: str | None,
    ) -> None:
        """Wait for a slot, run, record; whatever happens, the row ends in a final state.

        This runs in the service's task group: nothing may escape it, or every project's
        work would be cancelled with it.
        """
        runtime = self.service.runtime_of(project.project_id)
        assert live.ticket is not None
        try:
            with live.wait_scope:
                await live.ticket.granted.wait()
            if live.ticket.granted.is_set() and live.abort_reason is None:
                await self._execute(project, live, command, cwd, env, timeout, stdin)
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

    async def _execute(
        self,
        project: Project,
        live: LiveExecution,
        command: str | Sequence[str],
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float,
        stdin: str | None,
    ) -> None:
        status = ExecutionStatus.FAILED
        reason: str | None = None
        storage = self.service.storage
        try:
            if live.execution.status == ExecutionStatus.QUEUED:
                started = utcnow()
                await self.service.store.mark_execution_started(
                    live.execution.execution_id, started
                )
                queued_at = live.execution.queued_at or started
                live.mark_started(started, int((started - queued_at).total_seconds() * 1000))
            client = await self.service.lifecycle.client(project)
            file_limit = await storage.file_size_limit(project, client)
            live.handle = await client.start_exec(
                command,
                cwd=cwd,
                env={**project.settings.environment_variables, **(env or {})},
                stdin=stdin.encode() if stdin is not None else None,
                stdin_open=live.keep_stdin_open,
                timeout_s=timeout,
                output_limit=self.service.limits.output_limit_bytes,
                tail_limit=self.service.limits.output_tail_bytes,
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
            stopping = self.service.runtime_of(project.project_id).stopping
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
            stopping = self.service.runtime_of(project.project_id).stopping
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
                "duration_ms": exit_info.duration_ms
                if exit_info
                else (int((completed - started).total_seconds() * 1000) if started else None),
            }
        )
        try:
            with anyio.CancelScope(shield=True):
                await self.service.store.finish_execution(finished)
        except Exception:
            # The database is failing; waiters must still learn the end. Logged loudly.
            log.exception("could not record the end of %s", finished.execution_id)
        live.finish(finished)

    # -- waiting and following ----------------------------------------------------------------

    async def run(
        self,
        agent_id: str,
        project_id: str,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
        keep_stdin_open: bool = False,
        wait_s: float | None = None,
    ) -> CommandResult:
        """Run a command and wait for its end, or for ``wait_s`` seconds (then: a handle).

        If the caller is cancelled while waiting, the command is killed.
        """
        if wait_s is not None and wait_s < 0:
            raise InvalidInput("wait_s must not be negative")
        live = await self.start(
            agent_id,
            project_id,
            command,
            cwd=cwd,
            env=env,
            timeout_s=timeout_s,
            stdin=stdin,
            keep_stdin_open=keep_stdin_open,
        )
        try:
            with anyio.move_on_after(wait_s if wait_s is not None else float("inf")):
                await self._follow(live)
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

    async def _follow(self, live: LiveExecution) -> None:
        while not live.finished.is_set():
            await live.wait_for_change(PROGRESS_EVERY_S)
            if not live.finished.is_set():
                await progress.report(self._progress_message(live))

    def _progress_message(self, live: LiveExecution) -> str:
        execution = live.execution
        if execution.status == ExecutionStatus.QUEUED:
            runtime = self.service.runtimes.get(execution.project_id)
            position = runtime.queue.positions().get(execution.execution_id) if runtime else None
            return f"queued (position {position})" if position else "queued"
        started = execution.started_at or utcnow()
        seconds = (utcnow() - started).total_seconds()
        size = sum(len(chunk.data) for chunk in live.chunks)
        return f"running for {seconds:.0f}s, {size} bytes of output"

    def result(self, live: LiveExecution) -> CommandResult:
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

    async def _locate(
        self, agent_id: str, execution_id: str, needed: AccessLevel
    ) -> tuple[Execution, AccessLevel, LiveExecution | None]:
        execution = await self.service.store.get_execution(execution_id)
        if execution is None:
            raise NotFound(
                f"no execution {execution_id!r}; list_executions or get_execution_history "
                "show the ids"
            )
        _, level = await self.service.authorize(agent_id, execution.project_id, needed)
        runtime = self.service.runtimes.get(execution.project_id)
        live = runtime.find(execution_id) if runtime else None
        return execution, level, live

    async def read_output(
        self, agent_id: str, execution_id: str, since: int = 0, wait_s: float = 0
    ) -> CommandOutput:
        """Output after cursor ``since``; with ``wait_s``, wait that long for more or the end."""
        if since < 0 or not 0 <= wait_s <= MAX_WAIT_S:
            raise InvalidInput(f"since must be >= 0 and wait_s between 0 and {MAX_WAIT_S:g}")
        execution, _, live = await self._locate(agent_id, execution_id, AccessLevel.READ_ONLY)
        if live is None:
            # Finished long ago: only the stored record is left.
            first = since == 0
            return CommandOutput(
                execution_id=execution_id,
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
        chunks = live.chunks[since:]
        current = live.execution
        return CommandOutput(
            execution_id=execution_id,
            status=current.status,
            exit_code=current.exit_code,
            stdout=render_output(chunks, "stdout"),
            stderr=render_output(chunks, "stderr"),
            next_since=since + len(chunks),
            finished=live.finished.is_set(),
            reason=current.reason,
        )

    async def send_input(
        self, agent_id: str, execution_id: str, data: str, *, eof: bool = False
    ) -> CommandOutput:
        _, _, live = await self._locate(agent_id, execution_id, AccessLevel.READ_WRITE)
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
            await live.handle.write_stdin(data.encode(), eof=eof)
        except StdinClosed as err:
            raise Conflict(f"the command has closed its input: {err}") from err
        return await self.read_output(agent_id, execution_id, 0, 0)

    async def cancel(self, agent_id: str, execution_id: str) -> CommandResult:
        execution, level, live = await self._locate(agent_id, execution_id, AccessLevel.READ_WRITE)
        if execution.agent_id != agent_id and level != AccessLevel.ADMIN:
            raise AccessDenied(
                f"execution {execution_id} was started by {execution.agent_id}; only its starter "
                "or an admin of the project may cancel it"
            )
        if live is None or live.finished.is_set():
            if live is not None:
                return self.result(live)
            raise Conflict(f"execution {execution_id} already finished ({execution.status})")
        await self._abort(live, ExecutionStatus.CANCELLED, f"cancelled by {agent_id}")
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
        if live.finished.is_set():
            return
        live.abort_status, live.abort_reason = status, reason
        runtime = self.service.runtimes.get(live.execution.project_id)
        if runtime is not None and live.ticket is not None and runtime.queue.withdraw(live.ticket):
            live.wait_scope.cancel()
            return
        if live.handle is not None:
            with anyio.move_on_after(ABORT_WAIT_S):
                try:
                    await live.handle.signal("KILL")
                except (GuestError, GuestUnreachable):
                    pass  # it ended meanwhile, or the VM is gone: either way it is not running

    async def abort_all(self, project_id: str, status: ExecutionStatus, reason: str) -> None:
        """Withdraw every queued execution of a project (a stop or delete is under way)."""
        runtime = self.service.runtimes.get(project_id)
        if runtime is None:
            return
        for live in list(runtime.live.values()):
            if live.handle is None:
                await self._abort(live, status, reason)

    # -- listing ------------------------------------------------------------------------------

    async def list_active(
        self,
        agent_id: str,
        project_id: str,
        state: Literal["queued", "running", "active"] = "active",
    ) -> ExecutionList:
        await self.service.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        wanted = {
            "queued": [ExecutionStatus.QUEUED],
            "running": [ExecutionStatus.RUNNING],
            "active": [ExecutionStatus.QUEUED, ExecutionStatus.RUNNING],
        }[state]
        rows = await self.service.store.list_executions(
            project_id, statuses=wanted, limit=1000, include_output=False
        )
        runtime = self.service.runtimes.get(project_id)
        positions = runtime.queue.positions() if runtime else {}
        limit = runtime.queue.limit if runtime else None
        return ExecutionList(
            project_id=project_id,
            max_concurrent_executions=limit,
            executions=sorted(
                (
                    row.model_copy(update={"queue_position": positions.get(row.execution_id)})
                    for row in rows
                ),
                key=lambda row: (row.queue_position or 0, row.queued_at or utcnow()),
            ),
        )

    async def history(
        self,
        agent_id: str,
        project_id: str,
        *,
        filter_agent: str | None = None,
        status: str | None = None,
        limit: int = 50,
        include_output: bool = False,
    ) -> ExecutionHistory:
        await self.service.authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        statuses = None
        if status is not None:
            try:
                statuses = [ExecutionStatus(status)]
            except ValueError:
                raise InvalidInput(
                    f"status {status!r} is not one of {', '.join(s.value for s in ExecutionStatus)}"
                ) from None
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000")
        executions = await self.service.store.list_executions(
            project_id,
            agent_id=filter_agent,
            statuses=statuses,
            limit=limit,
            include_output=include_output,
        )
        return ExecutionHistory(project_id=project_id, executions=executions)
