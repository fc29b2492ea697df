"""The MCP tools: validate, call ``ProjectService``, return its structured result.

Tool signatures and docstrings are the schema agents read, so each says when to use the tool.
ProjectVM errors become tool errors whose text says what happened and what to do next.
"""

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from guest_runtime.errors import ProjectVMError
from server.files import TextEdit
from server.progress import reporting
from server.results import (
    CommandOutput,
    CommandResult,
    DeleteResult,
    EditResult,
    EventsResult,
    ExecutionHistory,
    ExecutionList,
    FileList,
    FileRead,
    FileWrite,
    LockList,
    LockResult,
    MemberList,
    MoveResult,
    PathRemoval,
    ProjectInfo,
    ProjectList,
    ProjectStatus,
    SearchResults,
    WhoAmI,
)
from server.state import AppState, caller

__all__ = ["register_tools"]

log = logging.getLogger("projectvm.tools")

P = ParamSpec("P")
R = TypeVar("R")

ProjectId = Annotated[str, Field(description="the project's id, as returned by create_project")]
WorkspacePath = Annotated[
    str, Field(description="path relative to the workspace root (/workspace in the VM)")
]
ExecutionId = Annotated[
    str, Field(description="the execution's id, as returned by run_command or list_executions")
]
IfMatch = Annotated[
    str | None,
    Field(
        description="sha256 the file must still have (from read_file), or 'absent' to only "
        "create; on mismatch nothing is written and you get a conflict"
    ),
]

READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
CREATE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
LIFECYCLE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
DESTRUCTIVE_IDEMPOTENT = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)
DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)
COMMAND = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
)


class Edit(BaseModel):
    old_text: str = Field(description="exact text to replace, including whitespace")
    new_text: str = Field(description="replacement text")
    replace_all: bool = Field(default=False, description="replace every occurrence")


def _as_tool(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Name the call and route its progress for the service; let agents read ProjectVM's
    own error messages (other exceptions are bugs: the SDK logs them)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = kwargs.get("ctx")
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            if isinstance(ctx, Context):
                await ctx.report_progress(step, None, message)

        try:
            with reporting(fn.__name__, progress):
                return await fn(*args, **kwargs)
        except ProjectVMError as err:
            raise ToolError(str(err)) from err

    return wrapper


def register_tools(mcp: MCPServer) -> None:
    def tool(annotations: ToolAnnotations) -> Callable[[Callable[P, Awaitable[R]]], Any]:
        def register(fn: Callable[P, Awaitable[R]]) -> Any:
            return mcp.tool(annotations=annotations)(_as_tool(fn))

        return register

    @tool(CREATE)
    async def create_project(
        ctx: Context[AppState],
        name: Annotated[str, Field(description="a short human-readable name")],
        description: str = "",
        project_type: Annotated[
            Literal["development", "analysis", "deployment", "sandbox"],
            Field(description="template for the VM; 'development' has the usual dev tools"),
        ] = "development",
        settings: Annotated[
            dict[str, Any] | None,
            Field(
                description="optional settings: auto_sleep_minutes, max_storage_gb, "
                "environment_variables, network ('none' or 'egress'), cpus, memory_mb, "
                "max_concurrent_executions, allowed_tools"
            ),
        ] = None,
    ) -> ProjectInfo:
        """Create a project: an isolated VM with a persistent /workspace that agents share.

        Returns the project, including its project_id, which every other tool takes.
        """
        state, agent = caller(ctx)
        return await state.service.create_project(agent, name, description, project_type, settings)

    @tool(READ)
    async def list_projects(ctx: Context[AppState]) -> ProjectList:
        """List the projects you own or are a member of, with their status."""
        state, agent = caller(ctx)
        return await state.service.list_projects(agent)

    @tool(READ)
    async def get_project(ctx: Context[AppState], project_id: ProjectId) -> ProjectInfo:
        """Show one project: status, settings, members and your access level."""
        state, agent = caller(ctx)
        return await state.service.get_project(agent, project_id)

    @tool(LIFECYCLE)
    async def start_project(ctx: Context[AppState], project_id: ProjectId) -> ProjectStatus:
        """Start a stopped project's VM. Its workspace is as it was left."""
        state, agent = caller(ctx)
        return await state.service.lifecycle.start(agent, project_id)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def stop_project(ctx: Context[AppState], project_id: ProjectId) -> ProjectStatus:
        """Stop a project's VM to free resources. Files persist; running commands are killed."""
        state, agent = caller(ctx)
        return await state.service.lifecycle.stop(agent, project_id)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def delete_project(ctx: Context[AppState], project_id: ProjectId) -> DeleteResult:
        """Delete a project, its VM and its workspace for good. The audit history is kept."""
        state, agent = caller(ctx)
        return await state.service.lifecycle.delete(agent, project_id)

    @tool(COMMAND)
    async def run_command(
        ctx: Context[AppState],
        project_id: ProjectId,
        command: Annotated[
            str, Field(description="a shell command line, run with bash -c (sh -c without bash)")
        ],
        cwd: Annotated[
            str | None, Field(description="working directory in the workspace; default its root")
        ] = None,
        env: Annotated[
            dict[str, str] | None, Field(description="extra environment variables")
        ] = None,
        timeout_s: Annotated[
            float | None,
            Field(description="kill the command (and its children) after this many seconds"),
        ] = None,
        stdin: Annotated[str | None, Field(description="text fed to the command's stdin")] = None,
        wait_s: Annotated[
            float | None,
            Field(
                description="return after this many seconds even if the command still runs "
                "(status 'running' or 'queued'); follow it with read_command_output"
            ),
        ] = None,
        keep_stdin_open: Annotated[
            bool, Field(description="keep stdin open so send_input can feed the command")
        ] = False,
    ) -> CommandResult:
        """Run a shell command in the project's VM and return exit_code, stdout and stderr.

        A non-zero exit_code is a normal result. Long output keeps its start and its end, with
        the middle omitted (truncated: true). Commands beyond the project's concurrency limit
        wait in a fair queue (queued_ms says how long). Cancelling this call kills the command.
        """
        state, agent = caller(ctx)
        return await state.service.executions.run(
            agent,
            project_id,
            command,
            cwd=cwd,
            env=env,
            timeout_s=timeout_s,
            stdin=stdin,
            keep_stdin_open=keep_stdin_open,
            wait_s=wait_s,
        )

    @tool(READ)
    async def read_command_output(
        ctx: Context[AppState],
        execution_id: ExecutionId,
        since: Annotated[
            int, Field(ge=0, description="next_since from the previous call; 0 = from the start")
        ] = 0,
        wait_s: Annotated[
            float, Field(ge=0, le=300, description="wait up to this long for new output")
        ] = 0,
    ) -> CommandOutput:
        """Follow a command's output (any member may follow any execution of the project).

        Pass the returned next_since to get only what came after; finished: true at the end.
        """
        state, agent = caller(ctx)
        return await state.service.executions.read_output(agent, execution_id, since, wait_s)

    @tool(DESTRUCTIVE)
    async def send_input(
        ctx: Context[AppState],
        execution_id: ExecutionId,
        data: Annotated[str, Field(description="text written to the command's stdin")],
        eof: Annotated[bool, Field(description="close stdin after writing")] = False,
    ) -> CommandOutput:
        """Write to the stdin of a running command started with keep_stdin_open."""
        state, agent = caller(ctx)
        return await state.service.executions.send_input(agent, execution_id, data, eof=eof)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def cancel_execution(ctx: Context[AppState], execution_id: ExecutionId) -> CommandResult:
        """Cancel a queued or running command (yours, or any if you are an admin)."""
        state, agent = caller(ctx)
        return await state.service.executions.cancel(agent, execution_id)

    @tool(READ)
    async def list_executions(
        ctx: Context[AppState],
        project_id: ProjectId,
        state: Annotated[
            Literal["queued", "running", "active"],
            Field(description="'active' = queued and running"),
        ] = "active",
    ) -> ExecutionList:
        """Commands waiting and running now, with queue positions (1 = starts next)."""
        app, agent = caller(ctx)
        return await app.service.executions.list_active(agent, project_id, state)

    @tool(READ)
    async def read_file(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath,
        offset: Annotated[
            int | None,
            Field(description="first line to return, counting from 1 (a byte offset for base64)"),
        ] = None,
        limit: Annotated[
            int | None, Field(description="how many lines to return (bytes for base64)")
        ] = None,
        encoding: Annotated[
            Literal["auto", "utf-8", "base64"],
            Field(description="'auto' returns text, or base64 if the file is not UTF-8"),
        ] = "auto",
    ) -> FileRead:
        """Read a file from the workspace. The sha256 lets a later write detect conflicts."""
        state, agent = caller(ctx)
        return await state.service.files.read(
            agent, project_id, path, offset=offset, limit=limit, encoding=encoding
        )

    @tool(DESTRUCTIVE)
    async def write_file(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath,
        content: Annotated[str, Field(description="the whole new content")],
        encoding: Annotated[
            Literal["utf-8", "base64"], Field(description="how content is encoded")
        ] = "utf-8",
        if_match: IfMatch = None,
        append: Annotated[bool, Field(description="add to the end instead of replacing")] = False,
    ) -> FileWrite:
        """Create or replace a file atomically (parent directories are created).

        Readers never see a half-written file. Pass if_match to avoid overwriting someone
        else's change.
        """
        state, agent = caller(ctx)
        return await state.service.files.write(
            agent, project_id, path, content, encoding=encoding, if_match=if_match, append=append
        )

    @tool(DESTRUCTIVE)
    async def edit_file(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath,
        edits: Annotated[
            list[Edit], Field(description="replacements applied in order, all or none")
        ],
        if_match: IfMatch = None,
        dry_run: Annotated[bool, Field(description="only show the diff, change nothing")] = False,
    ) -> EditResult:
        """Replace exact pieces of text in a file and return a unified diff.

        Each old_text must occur exactly once (unless replace_all). The edit is atomic and
        fails with a conflict if the file changed meanwhile.
        """
        state, agent = caller(ctx)
        text_edits = [TextEdit(e.old_text, e.new_text, e.replace_all) for e in edits]
        return await state.service.files.edit(
            agent, project_id, path, text_edits, if_match=if_match, dry_run=dry_run
        )

    @tool(READ)
    async def list_files(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath = ".",
        recursive: bool = False,
        include_hidden: bool = True,
        max_entries: Annotated[int, Field(ge=1, le=20000)] = 1000,
    ) -> FileList:
        """List a directory of the workspace (recursively if asked), sorted by path."""
        state, agent = caller(ctx)
        return await state.service.files.list(
            agent,
            project_id,
            path,
            recursive=recursive,
            include_hidden=include_hidden,
            max_entries=max_entries,
        )

    @tool(READ)
    async def search_files(
        ctx: Context[AppState],
        project_id: ProjectId,
        pattern: Annotated[
            str, Field(description="text to find in files; empty to match names by glob only")
        ] = "",
        path: WorkspacePath = ".",
        regex: Annotated[bool, Field(description="treat pattern as a regular expression")] = False,
        glob: Annotated[
            str | None, Field(description="only files whose name matches, e.g. '*.py'")
        ] = None,
        ignore_case: bool = False,
        max_results: Annotated[int, Field(ge=1, le=5000)] = 200,
    ) -> SearchResults:
        """Search file contents (like grep -rn) or names (by glob) under a directory."""
        state, agent = caller(ctx)
        return await state.service.files.search(
            agent,
            project_id,
            pattern,
            path=path,
            regex=regex,
            ignore_case=ignore_case,
            glob=glob,
            max_results=max_results,
        )

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def delete_path(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath,
        recursive: Annotated[
            bool, Field(description="needed to delete a non-empty directory")
        ] = False,
        if_match: IfMatch = None,
    ) -> PathRemoval:
        """Delete a file or directory in the workspace."""
        state, agent = caller(ctx)
        return await state.service.files.delete(
            agent, project_id, path, recursive=recursive, if_match=if_match
        )

    @tool(DESTRUCTIVE)
    async def move_path(
        ctx: Context[AppState],
        project_id: ProjectId,
        source: WorkspacePath,
        destination: WorkspacePath,
        overwrite: bool = False,
    ) -> MoveResult:
        """Move or rename a file or directory within the workspace."""
        state, agent = caller(ctx)
        return await state.service.files.move(
            agent, project_id, source, destination, overwrite=overwrite
        )

    @tool(READ)
    async def get_execution_history(
        ctx: Context[AppState],
        project_id: ProjectId,
        agent_id: Annotated[str | None, Field(description="only this agent's commands")] = None,
        status: Annotated[
            str | None,
            Field(description="only this status: completed, failed, timed_out, cancelled, ..."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
        include_output: bool = False,
    ) -> ExecutionHistory:
        """The audit log of commands run in a project: who ran what, when, and how it ended."""
        state, agent = caller(ctx)
        return await state.service.executions.history(
            agent,
            project_id,
            filter_agent=agent_id,
            status=status,
            limit=limit,
            include_output=include_output,
        )

    @tool(READ)
    async def whoami(ctx: Context[AppState]) -> WhoAmI:
        """Your agent id and your access level in each project you can see."""
        state, agent = caller(ctx)
        return await state.service.whoami(agent, state.transport)

    @tool(READ)
    async def list_members(ctx: Context[AppState], project_id: ProjectId) -> MemberList:
        """The agents of a project and their access levels."""
        state, agent = caller(ctx)
        return await state.service.list_members(agent, project_id)

    @tool(LIFECYCLE)
    async def assign_agent(
        ctx: Context[AppState],
        project_id: ProjectId,
        agent_id: Annotated[str, Field(description="the agent to add or change")],
        access_level: Annotated[
            Literal["read_only", "read_write", "admin"],
            Field(
                description="read_only: read files, history, events, follow commands; "
                "read_write: also write files and run commands; admin: also settings, members, "
                "start, stop, delete"
            ),
        ],
    ) -> MemberList:
        """Give another agent access to a project, or change its level (admins only)."""
        state, agent = caller(ctx)
        return await state.service.assign_agent(agent, project_id, agent_id, access_level)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def remove_agent(
        ctx: Context[AppState],
        project_id: ProjectId,
        agent_id: Annotated[str, Field(description="the member to remove (yourself to leave)")],
    ) -> MemberList:
        """Take an agent's access to a project away (admins; anyone may remove themselves)."""
        state, agent = caller(ctx)
        return await state.service.remove_agent(agent, project_id, agent_id)

    @tool(LIFECYCLE)
    async def update_project_settings(
        ctx: Context[AppState],
        project_id: ProjectId,
        settings: Annotated[
            dict[str, Any],
            Field(
                description='only the settings to change, e.g. {"max_concurrent_executions": '
                "2}; the others keep their values"
            ),
        ],
    ) -> ProjectInfo:
        """Change a project's settings (admins only); the change is recorded as an event."""
        state, agent = caller(ctx)
        return await state.service.update_settings(agent, project_id, settings)

    @tool(LIFECYCLE)
    async def lock_path(
        ctx: Context[AppState],
        project_id: ProjectId,
        path: WorkspacePath,
        ttl_s: Annotated[
            float, Field(gt=0, le=86400, description="the lock expires after this many seconds")
        ] = 300,
    ) -> LockResult:
        """Lock a file or directory: other agents' writes under it are refused until unlock or
        expiry. Advisory: commands in the VM are not checked. Locking again extends it."""
        state, agent = caller(ctx)
        return await state.service.locks.lock(agent, project_id, path, ttl_s)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def unlock_path(
        ctx: Context[AppState], project_id: ProjectId, path: WorkspacePath
    ) -> LockResult:
        """Release a lock you hold (admins may release any)."""
        state, agent = caller(ctx)
        return await state.service.locks.unlock(agent, project_id, path)

    @tool(READ)
    async def list_locks(ctx: Context[AppState], project_id: ProjectId) -> LockList:
        """The project's current path locks, with holders and expiry times."""
        state, agent = caller(ctx)
        return await state.service.locks.list(agent, project_id)

    @tool(READ)
    async def get_events(
        ctx: Context[AppState],
        project_id: ProjectId,
        since_id: Annotated[
            int, Field(ge=0, description="last_event_id from the previous call; 0 = from start")
        ] = 0,
        wait_s: Annotated[
            float, Field(ge=0, le=300, description="wait up to this long for a new event")
        ] = 0,
        limit: Annotated[int, Field(ge=1, le=1000)] = 200,
    ) -> EventsResult:
        """What happened in a project, in order: files changed and by whom, commands queued,
        started and finished, VM status, members, locks, settings. Long-polls with wait_s."""
        state, agent = caller(ctx)
        return await state.service.get_events(
            agent, project_id, since_id=since_id, wait_s=wait_s, limit=limit
        )
