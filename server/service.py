"""``ProjectService``: the business rules of ProjectVM, for every entry point.

It checks who may do what, keeps the store in step with the VMs, records every execution and
every change as it happens, and routes work through a driver's channel to the guest runtime. It
knows nothing of MCP or HTTP; tools and routes are thin layers over it.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestError, GuestUnreachable, WriteConflict
from server.channels import ChannelPool
from server.config import Limits
from server.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ProjectNotRunning,
)
from server.live import LiveExecution
from server.liveness import server_is_alive, this_server_id
from server.models import (
    AGENT_ID_PATTERN,
    AccessLevel,
    Execution,
    ExecutionStatus,
    Project,
    ProjectSettings,
    ProjectType,
    VMStatus,
)
from server.results import (
    CommandResult,
    DeleteResult,
    EditResult,
    ExecutionHistory,
    FileEntry,
    FileList,
    FileRead,
    FileWrite,
    MoveResult,
    PathRemoval,
    ProjectInfo,
    ProjectList,
    ProjectStatus,
    SearchHit,
    SearchResults,
)
from server.store import Store, utcnow
from vm_drivers.base import VMDriver, VMSpec
from vm_drivers.errors import DriverError, VMNotFound
from vm_drivers.registry import DriverSet

__all__ = ["ProjectService", "TextEdit"]

# How long past its own timeout a command may go unreported before the host gives up on it.
GUEST_REPORT_GRACE_S = 30.0


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass
class TextEdit:
    old_text: str
    new_text: str
    replace_all: bool = False


@dataclass
class _Runtime:
    """What the server holds in memory about one project."""

    lifecycle: anyio.Lock = field(default_factory=anyio.Lock)
    # Set while a stop or delete is under way: why running commands are being killed.
    stopping: str | None = None
    live: dict[str, LiveExecution] = field(default_factory=dict)


class ProjectService:
    """Use as ``async with ProjectService(...) as service``; it owns the guest channels."""

    def __init__(
        self,
        store: Store,
        drivers: DriverSet,
        default_driver: str,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.drivers = drivers
        self.default_driver = default_driver
        self.limits = limits or Limits()
        self._runtimes: dict[str, _Runtime] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._channels: ChannelPool | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._channels = ChannelPool(self._task_group)
        await self.store.interrupt_orphaned_executions(
            "the server stopped while this execution was queued or running", server_is_alive
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        assert self._channels is not None
        with anyio.CancelScope(shield=True):
            await self._channels.aclose()
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    @property
    def channels(self) -> ChannelPool:
        if self._channels is None:
            raise RuntimeError("ProjectService is used outside its `async with` block")
        return self._channels

    def _runtime(self, project_id: str) -> _Runtime:
        return self._runtimes.setdefault(project_id, _Runtime())

    # -- identity and access ------------------------------------------------------------------

    async def ensure_agent(self, agent_id: str) -> None:
        if not AGENT_ID_PATTERN.match(agent_id):
            raise InvalidInput(
                f"{agent_id!r} is not a valid agent id: use 1-64 lowercase letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        await self.store.ensure_agent(agent_id)

    async def _authorize(
        self, agent_id: str, project_id: str, needed: AccessLevel
    ) -> tuple[Project, AccessLevel]:
        """The project and the caller's level, if the caller may act at ``needed`` level."""
        level = await self.store.member_level(project_id, agent_id)
        project = await self.store.get_project(project_id) if level is not None else None
        if project is None or level is None:
            # Non-members learn nothing, not even that the project exists.
            raise NotFound(
                f"no project {project_id!r} is visible to agent {agent_id!r}; list_projects shows "
                "yours, and an admin of the project can add you with assign_agent"
            )
        if not level.allows(needed):
            raise AccessDenied(
                f"agent {agent_id!r} has {level} access to project {project_id!r}; this needs "
                f"{needed} or higher; ask an admin of the project to change your level"
            )
        return project, level

    # -- projects -----------------------------------------------------------------------------

    async def create_project(
        self,
        agent_id: str,
        name: str,
        description: str = "",
        project_type: str = ProjectType.DEVELOPMENT,
        settings: Mapping[str, Any] | None = None,
    ) -> ProjectInfo:
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("name must be 1 to 200 characters")
        try:
            kind = ProjectType(project_type)
        except ValueError:
            raise InvalidInput(
                f"project_type {project_type!r} is not one of "
                f"{', '.join(t.value for t in ProjectType)}"
            ) from None
        project_settings = self._parse_settings(settings or {})
        await self.ensure_agent(agent_id)
        now = utcnow()
        project = Project(
            project_id=new_id("prj"),
            name=name,
            description=description,
            project_type=kind,
            driver=self.default_driver,
            vm_id=None,
            vm_status=VMStatus.CREATING,
            owner_id=agent_id,
            agents=[agent_id],
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            settings=project_settings,
        )
        await self.store.insert_project(project)
        driver = self.drivers.get(project.driver)
        try:
            created = await driver.create_project_vm(self._spec(project))
        except DriverError as err:
            await self._set_status(project, agent_id, VMStatus.FAILED, f"creation failed: {err}")
            raise DriverError(
                f"project {project.project_id} was recorded but its VM could not be created: "
                f"{err}. Retry with start_project, or remove it with delete_project"
            ) from err
        await self.store.update_project(
            project.project_id,
            vm_id=created.vm_id,
            vm_status=created.status,
            vm_status_reason=None,
            vm_url=created.vm_url,
            workspace_path=created.workspace_path,
            event=(agent_id, "vm.status", {"status": created.status, "vm_id": created.vm_id}),
        )
        return await self.get_project(agent_id, project.project_id)

    @staticmethod
    def _parse_settings(values: Mapping[str, Any]) -> ProjectSettings:
        try:
            return ProjectSettings.model_validate(dict(values))
        except ValueError as err:
            raise InvalidInput(f"invalid project settings: {err}") from err

    @staticmethod
    def _spec(project: Project) -> VMSpec:
        return VMSpec(
            project_id=project.project_id,
            name=project.name,
            project_type=project.project_type,
            cpus=project.settings.cpus,
            memory_mb=project.settings.memory_mb,
            disk_gb=project.settings.max_storage_gb,
            network=project.settings.network,
        )

    async def _set_status(
        self, project: Project, agent_id: str | None, status: VMStatus, reason: str | None = None
    ) -> None:
        await self.store.update_project(
            project.project_id,
            vm_status=status,
            vm_status_reason=reason,
            event=(agent_id, "vm.status", {"status": status, "reason": reason}),
        )

    async def list_projects(self, agent_id: str) -> ProjectList:
        projects = await self.store.list_projects(agent_id)
        infos = []
        for project in projects:
            level = await self.store.member_level(project.project_id, agent_id)
            infos.append(ProjectInfo.of(project, level))
        return ProjectList(projects=infos)

    async def get_project(self, agent_id: str, project_id: str) -> ProjectInfo:
        project, level = await self._authorize(agent_id, project_id, AccessLevel.READ_ONLY)
        info = ProjectInfo.of(project, level)
        info.members = await self.store.list_members(project_id)
        return info

    def _driver(self, project: Project) -> VMDriver:
        return self.drivers.get(project.driver)

    async def start_project(self, agent_id: str, project_id: str) -> ProjectStatus:
        project, _ = await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
        async with self._runtime(project_id).lifecycle:
            project, _ = await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
            if project.vm_status == VMStatus.RUNNING:
                return ProjectStatus(
                    project_id=project_id, status=VMStatus.RUNNING, message="already running"
                )
            await self._boot(project, agent_id)
        return ProjectStatus(project_id=project_id, status=VMStatus.RUNNING, message="started")

    async def _boot(self, project: Project, agent_id: str | None) -> None:
        """Start (or, if it was never made, create) the project's VM and record the outcome."""
        driver = self._driver(project)
        try:
            if project.vm_id is None:
                created = await driver.create_project_vm(self._spec(project))
                await self.store.update_project(
                    project.project_id,
                    vm_id=created.vm_id,
                    vm_url=created.vm_url,
                    workspace_path=created.workspace_path,
                )
            else:
                await driver.start_project_vm(project.vm_id)
        except DriverError as err:
            await self._set_status(project, agent_id, VMStatus.FAILED, f"start failed: {err}")
            raise
        await self._set_status(project, agent_id, VMStatus.RUNNING)

    async def stop_project(self, agent_id: str, project_id: str) -> ProjectStatus:
        await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
        runtime = self._runtime(project_id)
        async with runtime.lifecycle:
            project, _ = await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
            if project.vm_status == VMStatus.STOPPED:
                return ProjectStatus(
                    project_id=project_id, status=VMStatus.STOPPED, message="already stopped"
                )
            runtime.stopping = f"the project was stopped by {agent_id} while the command ran"
            try:
                await self.channels.close(project_id)
                if project.vm_id is not None:
                    try:
                        await self._driver(project).stop_project_vm(project.vm_id)
                    except VMNotFound:
                        pass
            except DriverError as err:
                await self._set_status(project, agent_id, VMStatus.FAILED, f"stop failed: {err}")
                raise
            finally:
                runtime.stopping = None
            await self._set_status(project, agent_id, VMStatus.STOPPED, f"stopped by {agent_id}")
        return ProjectStatus(project_id=project_id, status=VMStatus.STOPPED, message="stopped")

    async def delete_project(self, agent_id: str, project_id: str) -> DeleteResult:
        try:
            await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
        except NotFound:
            return DeleteResult(
                project_id=project_id,
                deleted=False,
                message="no such project is visible to you; nothing was deleted",
            )
        runtime = self._runtime(project_id)
        async with runtime.lifecycle:
            project, _ = await self._authorize(agent_id, project_id, AccessLevel.ADMIN)
            runtime.stopping = f"the project was deleted by {agent_id} while the command ran"
            await self._set_status(project, agent_id, VMStatus.DESTROYING)
            try:
                await self.channels.close(project_id)
                if project.vm_id is not None:
                    await self._driver(project).destroy_project_vm(project.vm_id)
            except DriverError as err:
                await self._set_status(project, agent_id, VMStatus.FAILED, f"delete failed: {err}")
                raise DriverError(
                    f"could not delete the VM of project {project_id}: {err}; call delete_project "
                    "again to retry"
                ) from err
            finally:
                runtime.stopping = None
            await self.store.delete_project(project_id, agent_id)
        self._runtimes.pop(project_id, None)
        return DeleteResult(project_id=project_id, deleted=True, message="project and VM deleted")

    # -- the channel to a project's guest -----------------------------------------------------

    async def _client(self, project: Project) -> GuestClient:
        if project.vm_status != VMStatus.RUNNING or project.vm_id is None:
            reason = f" ({project.vm_status_reason})" if project.vm_status_reason else ""
            raise ProjectNotRunning(
                f"project {project.project_id} is {project.vm_status}{reason}; call "
                "start_project to start it"
            )
        try:
            try:
                return await self.channels.client(
                    project.project_id, self._driver(project), project.vm_id
                )
            except GuestUnreachable as first:
                # The VM may have crashed, or been stopped or removed behind our back.
                await self._recover(project, str(first))
                return await self.channels.client(
                    project.project_id, self._driver(project), project.vm_id
                )
        except (GuestUnreachable, DriverError) as err:
            raise GuestUnreachable(
                f"cannot reach the VM of project {project.project_id}: {err}; try again, or "
                "stop_project and start_project to restart it"
            ) from err

    async def _recover(self, project: Project, reason: str) -> None:
        """Start the VM of a project recorded as running whose VM is not (once per call)."""
        async with self._runtime(project.project_id).lifecycle:
            current = await self.store.get_project(project.project_id)
            if current is None or current.vm_status != VMStatus.RUNNING or current.vm_id is None:
                raise ProjectNotRunning(
                    f"project {project.project_id} was stopped or deleted meanwhile; call "
                    "start_project to start it"
                )
            driver = self._driver(current)
            try:
                status = await driver.get_vm_status(current.vm_id)
            except VMNotFound as err:
                await self._set_status(current, None, VMStatus.FAILED, f"the VM is gone: {err}")
                raise
            if status == VMStatus.RUNNING:
                return  # running: the channel failed for another reason; the retry will tell
            await driver.start_project_vm(current.vm_id)
            await self.store.append_event(
                current.project_id,
                None,
                "vm.recovered",
                {"was": status, "reason": reason},
            )

    # -- commands -----------------------------------------------------------------------------

    def _timeout(self, timeout_s: float | None) -> float:
        timeout = self.limits.default_timeout_s if timeout_s is None else timeout_s
        if not 0 < timeout <= self.limits.max_timeout_s:
            raise InvalidInput(
                f"timeout_s must be between 0 and {self.limits.max_timeout_s:g} seconds"
            )
        return timeout

    async def run_command(
        self,
        agent_id: str,
        project_id: str,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run a command to its end (or timeout) and return its exit code and output."""
        project, _ = await self._authorize(agent_id, project_id, AccessLevel.READ_WRITE)
        text = command if isinstance(command, str) else " ".join(command)
        if not text.strip():
            raise InvalidInput("command is empty; pass a shell command such as 'ls -la'")
        timeout = self._timeout(timeout_s)
        client = await self._client(project)
        now = utcnow()
        execution = Execution(
            execution_id=new_id("exe"),
            project_id=project_id,
            agent_id=agent_id,
            command=text,
            cwd=cwd,
            status=ExecutionStatus.RUNNING,
            queued_at=now,
            started_at=now,
            queued_ms=0,
        )
        await self.store.insert_execution(execution, this_server_id())
        live = LiveExecution(execution)
        runtime = self._runtime(project_id)
        runtime.live[execution.execution_id] = live
        try:
            await self._execute(project, client, live, command, cwd, env, timeout, stdin)
        finally:
            runtime.live.pop(execution.execution_id, None)
        return self._command_result(live.execution)

    async def _execute(
        self,
        project: Project,
        client: GuestClient,
        live: LiveExecution,
        command: str | Sequence[str],
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float,
        stdin: str | None,
    ) -> None:
        """Run ``live``'s command and record how it ended, whatever happens to the caller."""
        status = ExecutionStatus.FAILED
        reason: str | None = None
        cancelled = anyio.get_cancelled_exc_class()
        try:
            live.handle = await client.start_exec(
                command,
                cwd=cwd,
                env={**project.settings.environment_variables, **(env or {})},
                stdin=stdin.encode() if stdin is not None else None,
                timeout_s=timeout,
                output_limit=self.limits.output_limit_bytes,
                tail_limit=self.limits.output_tail_bytes,
                exec_id=live.execution.execution_id,
            )
            with anyio.move_on_after(timeout + GUEST_REPORT_GRACE_S) as scope:
                async for event in live.handle.events():
                    live.add(event)
            if scope.cancelled_caught:
                reason = "the VM did not report the command's end; it may be overloaded"
            elif live.exit is not None:
                status, reason = self._exit_status(live, project.project_id)
        except GuestUnreachable as err:
            stopping = self._runtime(project.project_id).stopping
            status = ExecutionStatus.KILLED if stopping else ExecutionStatus.FAILED
            reason = stopping or f"the VM went away while the command ran: {err}"
        except GuestError as err:
            reason = str(err)
            await self._finish(live, status, reason)
            raise
        except cancelled:
            status = ExecutionStatus.CANCELLED
            reason = "the caller cancelled the request"
            with anyio.CancelScope(shield=True):
                if live.handle is not None and not client.closed:
                    with anyio.move_on_after(5):
                        try:
                            await live.handle.signal("KILL")
                        except (GuestError, GuestUnreachable):
                            pass
                await self._finish(live, status, reason)
            raise
        await self._finish(live, status, reason)

    def _exit_status(
        self, live: LiveExecution, project_id: str
    ) -> tuple[ExecutionStatus, str | None]:
        assert live.exit is not None
        if live.exit.timed_out:
            return ExecutionStatus.TIMED_OUT, "killed after timeout_s; raise timeout_s if needed"
        if live.exit.killed:
            stopping = self._runtime(project_id).stopping
            if stopping:
                return ExecutionStatus.KILLED, stopping
            return ExecutionStatus.CANCELLED, "cancelled on request"
        return ExecutionStatus.COMPLETED, None

    async def _finish(
        self, live: LiveExecution, status: ExecutionStatus, reason: str | None
    ) -> None:
        exit_info = live.exit
        started = live.execution.started_at or utcnow()
        completed = utcnow()
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
                else int((completed - started).total_seconds() * 1000),
            }
        )
        with anyio.CancelScope(shield=True):
            await self.store.finish_execution(finished)
        live.finish(finished)

    @staticmethod
    def _command_result(execution: Execution) -> CommandResult:
        return CommandResult(
            project_id=execution.project_id,
            execution_id=execution.execution_id,
            status=execution.status,
            exit_code=execution.exit_code,
            stdout=execution.output or "",
            stderr=execution.error_output or "",
            timed_out=execution.timed_out,
            truncated=execution.truncated,
            duration_ms=execution.duration_ms,
            queued_ms=execution.queued_ms,
            reason=execution.reason,
        )

    async def get_execution_history(
        self,
        agent_id: str,
        project_id: str,
        *,
        filter_agent: str | None = None,
        status: str | None = None,
        limit: int = 50,
        include_output: bool = False,
    ) -> ExecutionHistory:
        await self._authorize(agent_id, project_id, AccessLevel.READ_ONLY)
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
        executions = await self.store.list_executions(
            project_id,
            agent_id=filter_agent,
            statuses=statuses,
            limit=limit,
            include_output=include_output,
        )
        return ExecutionHistory(project_id=project_id, executions=executions)

    # -- files --------------------------------------------------------------------------------

    async def _file_client(
        self, agent_id: str, project_id: str, needed: AccessLevel
    ) -> tuple[Project, GuestClient]:
        project, _ = await self._authorize(agent_id, project_id, needed)
        return project, await self._client(project)

    async def read_file(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        *,
        offset: int | None = None,
        limit: int | None = None,
        encoding: Literal["auto", "utf-8", "base64"] = "auto",
    ) -> FileRead:
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_ONLY)
        max_bytes = self.limits.max_file_bytes
        if encoding == "base64":
            start = offset or 0
            if start < 0 or (limit is not None and limit < 0):
                raise InvalidInput("offset and limit must not be negative")
            data = await client.read_file(path, offset=start, length=limit, max_bytes=max_bytes)
            return FileRead(
                project_id=project_id,
                path=data.path,
                content=base64.b64encode(data.data).decode(),
                encoding="base64",
                sha256=data.sha256,
                size=data.size,
                offset=start,
                truncated=not data.eof,
            )
        first_line = 1 if offset is None else offset
        if first_line < 1 or (limit is not None and limit < 1):
            raise InvalidInput("offset is a line number counting from 1; limit must be >= 1")
        data = await client.read_file(
            path, line_offset=first_line - 1, line_limit=limit, max_bytes=max_bytes
        )
        try:
            content, used = data.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            if encoding == "utf-8":
                raise InvalidInput(
                    f"{data.path} is not valid UTF-8; read it with encoding='base64'"
                ) from None
            content, used = base64.b64encode(data.data).decode(), "base64"
        return FileRead(
            project_id=project_id,
            path=data.path,
            content=content,
            encoding=used,  # type: ignore[arg-type]
            sha256=data.sha256,
            size=data.size,
            offset=first_line,
            total_lines=data.total_lines,
            lines_returned=data.line_count,
            truncated=not data.eof,
        )

    def _decode_content(self, content: str, encoding: str) -> bytes:
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("content is not valid base64") from None
        elif encoding in ("utf-8", "utf8", "text"):
            data = content.encode("utf-8")
        else:
            raise InvalidInput(f"encoding must be 'utf-8' or 'base64', not {encoding!r}")
        if len(data) > self.limits.max_file_bytes:
            raise LimitExceeded(
                f"the content is {len(data)} bytes; one write takes at most "
                f"{self.limits.max_file_bytes} bytes. Write it in parts with append, or produce "
                "it inside the VM with run_command"
            )
        return data

    async def _conflict(self, project_id: str, err: WriteConflict) -> Conflict:
        path = str(err.data.get("path", ""))
        last = await self.store.last_event_for_path(project_id, path)
        who = f"; last changed by {last.agent_id} at {last.created_at.isoformat()}" if last else ""
        return Conflict(
            f"{path} changed since you read it: it now has sha256 "
            f"{err.current_sha256 or 'absent (deleted)'}{who}. Read it again, then retry with "
            "the new sha256 as if_match",
            current_sha256=err.current_sha256,
            changed_by=last.agent_id if last else None,
        )

    async def write_file(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        content: str,
        *,
        encoding: str = "utf-8",
        if_match: str | None = None,
        append: bool = False,
    ) -> FileWrite:
        data = self._decode_content(content, encoding)
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_WRITE)
        try:
            written = await client.write_file(path, data, if_match=if_match, append=append)
        except WriteConflict as err:
            raise await self._conflict(project_id, err) from err
        await self.store.append_event(
            project_id,
            agent_id,
            "file.written",
            {"path": written.path, "sha256": written.sha256, "size": written.size},
        )
        return FileWrite(
            project_id=project_id,
            path=written.path,
            sha256=written.sha256,
            size=written.size,
            created=written.created,
        )

    async def edit_file(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        edits: Sequence[TextEdit],
        *,
        if_match: str | None = None,
        dry_run: bool = False,
    ) -> EditResult:
        if not edits:
            raise InvalidInput("edits is empty; give at least one {old_text, new_text}")
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_WRITE)
        current = await client.read_file(path, max_bytes=self.limits.max_file_bytes)
        if not current.eof:
            raise LimitExceeded(f"{current.path} is larger than {self.limits.max_file_bytes} bytes")
        if if_match is not None and if_match != current.sha256:
            raise await self._conflict(
                project_id,
                WriteConflict(
                    "stale if_match", {"path": current.path, "current_sha256": current.sha256}
                ),
            )
        try:
            before = current.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{current.path} is not UTF-8 text; edit_file edits text") from None
        after, replacements = apply_edits(before, edits)
        diff = "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"a/{current.path}",
                tofile=f"b/{current.path}",
            )
        )
        if dry_run:
            return EditResult(
                project_id=project_id,
                path=current.path,
                sha256=current.sha256,
                replacements=replacements,
                diff=diff,
                applied=False,
            )
        try:
            written = await client.write_file(
                current.path, after.encode("utf-8"), if_match=current.sha256
            )
        except WriteConflict as err:
            raise await self._conflict(project_id, err) from err
        await self.store.append_event(
            project_id,
            agent_id,
            "file.edited",
            {"path": written.path, "sha256": written.sha256, "replacements": replacements},
        )
        return EditResult(
            project_id=project_id,
            path=written.path,
            sha256=written.sha256,
            replacements=replacements,
            diff=diff,
            applied=True,
        )

    async def list_files(
        self,
        agent_id: str,
        project_id: str,
        path: str = ".",
        *,
        recursive: bool = False,
        include_hidden: bool = True,
        max_entries: int = 1000,
    ) -> FileList:
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_ONLY)
        listing = await client.list_dir(
            path, recursive=recursive, include_hidden=include_hidden, max_entries=max_entries
        )
        entries = [
            FileEntry(
                path=entry.path,
                type=entry.type,
                size=entry.size,
                modified_at=datetime.fromtimestamp(entry.mtime, UTC),
            )
            for entry in listing.entries
        ]
        return FileList(
            project_id=project_id, path=listing.path, entries=entries, truncated=listing.truncated
        )

    async def search_files(
        self,
        agent_id: str,
        project_id: str,
        pattern: str = "",
        *,
        path: str = ".",
        regex: bool = False,
        ignore_case: bool = False,
        glob: str | None = None,
        max_results: int = 200,
    ) -> SearchResults:
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_ONLY)
        found = await client.search(
            pattern,
            path=path,
            regex=regex,
            ignore_case=ignore_case,
            glob=glob,
            max_results=max_results,
        )
        return SearchResults(
            project_id=project_id,
            matches=[SearchHit(path=m.path, line=m.line, text=m.text) for m in found.matches],
            files_scanned=found.files_scanned,
            truncated=found.truncated,
        )

    async def delete_path(
        self,
        agent_id: str,
        project_id: str,
        path: str,
        *,
        recursive: bool = False,
        if_match: str | None = None,
    ) -> PathRemoval:
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_WRITE)
        try:
            removed = await client.remove(path, recursive=recursive, if_match=if_match)
        except WriteConflict as err:
            raise await self._conflict(project_id, err) from err
        await self.store.append_event(project_id, agent_id, "file.deleted", {"path": path})
        return PathRemoval(project_id=project_id, path=path, removed=removed)

    async def move_path(
        self,
        agent_id: str,
        project_id: str,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
    ) -> MoveResult:
        _, client = await self._file_client(agent_id, project_id, AccessLevel.READ_WRITE)
        await client.move(source, destination, overwrite=overwrite)
        await self.store.append_event(
            project_id, agent_id, "file.moved", {"path": destination, "source": source}
        )
        return MoveResult(project_id=project_id, source=source, destination=destination)


def apply_edits(text: str, edits: Sequence[TextEdit]) -> tuple[str, int]:
    """Apply exact-text edits in order; each must match once (or everywhere with replace_all)."""
    replacements = 0
    for number, edit in enumerate(edits, 1):
        if not edit.old_text:
            raise InvalidInput(f"edit {number}: old_text is empty; quote the text to replace")
        count = text.count(edit.old_text)
        if count == 0:
            raise InvalidInput(
                f"edit {number}: old_text was not found; read the file again and copy the text "
                "exactly, including whitespace"
            )
        if count > 1 and not edit.replace_all:
            raise InvalidInput(
                f"edit {number}: old_text occurs {count} times; include more surrounding text "
                "to make it unique, or set replace_all"
            )
        text = text.replace(edit.old_text, edit.new_text)
        replacements += count
    return text, replacements
