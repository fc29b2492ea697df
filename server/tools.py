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
from server.results import (
    CommandResult,
    DeleteResult,
    EditResult,
    ExecutionHistory,
    FileList,
    FileRead,
    FileWrite,
    MoveResult,
    PathRemoval,
    ProjectInfo,
    ProjectList,
    ProjectStatus,
    SearchResults,
    WhoAmI,
)
from server.service import TextEdit
from server.state import AppState, caller

__all__ = ["register_tools"]

log = logging.getLogger("projectvm.tools")

P = ParamSpec("P")
R = TypeVar("R")

ProjectId = Annotated[str, Field(description="the project's id, as returned by create_project")]
WorkspacePath = Annotated[
    str, Field(description="path relative to the workspace root (/workspace in the VM)")
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


def _errors_as_tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let agents read ProjectVM's own error messages (other exceptions are bugs: logged)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ProjectVMError as err:
            raise ToolError(str(err)) from err

    return wrapper


def register_tools(mcp: MCPServer) -> None:
    def tool(annotations: ToolAnnotations) -> Callable[[Callable[P, Awaitable[R]]], Any]:
        def register(fn: Callable[P, Awaitable[R]]) -> Any:
            return mcp.tool(annotations=annotations)(_errors_as_tool_errors(fn))

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
        return await state.service.start_project(agent, project_id)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def stop_project(ctx: Context[AppState], project_id: ProjectId) -> ProjectStatus:
        """Stop a project's VM to free resources. Files persist; running commands are killed."""
        state, agent = caller(ctx)
        return await state.service.stop_project(agent, project_id)

    @tool(DESTRUCTIVE_IDEMPOTENT)
    async def delete_project(ctx: Context[AppState], project_id: ProjectId) -> DeleteResult:
        """Delete a project, its VM and its workspace for good. The audit history is kept."""
        state, agent = caller(ctx)
        return await state.service.delete_project(agent, project_id)

    @tool(COMMAND)
    async def run_command(
        ctx: Context[AppState],
        project_id: ProjectId,
        command: Annotated[str, Field(description="a shell command line, run with bash -c")],
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
    ) -> CommandResult:
        """Run a shell command in the project's VM and return exit_code, stdout and stderr.

        A non-zero exit_code is a normal result. Long output keeps its start and its end,
        with the middle omitted (truncated: true).
        """
        state, agent = caller(ctx)
        return await state.service.run_command(
            agent, project_id, command, cwd=cwd, env=env, timeout_s=timeout_s, stdin=stdin
        )

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
        return await state.service.read_file(
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
        return await state.service.write_file(
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
        return await state.service.edit_file(
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
        return await state.service.list_files(
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
        return await state.service.search_files(
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
        return await state.service.delete_path(
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
        return await state.service.move_path(
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
        return await state.service.get_execution_history(
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
        projects = await state.service.list_projects(agent)
        return WhoAmI(
            agent_id=agent,
            transport=state.transport,
            projects={p.project_id: p.your_access for p in projects.projects if p.your_access},
        )
