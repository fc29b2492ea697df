"""What ProjectService returns and MCP tools pass on: structured, with stable field names."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from server.domain.models import (
    AccessLevel,
    Event,
    Execution,
    ExecutionStatus,
    Member,
    PathLock,
    Project,
    ProjectSettings,
    ProjectType,
    VMStatus,
)

__all__ = [
    "CommandOutput",
    "CommandResult",
    "CostReport",
    "DeleteResult",
    "EditResult",
    "EventsResult",
    "ExecutionHistory",
    "ExecutionList",
    "FileEntry",
    "FileList",
    "FileRead",
    "FileWrite",
    "LockList",
    "LockResult",
    "MemberList",
    "MoveResult",
    "ProjectInfo",
    "ProjectList",
    "ProjectStatus",
    "ResourceUsage",
    "SearchHit",
    "SearchResults",
    "TerminalInfo",
    "TerminalList",
    "TerminalView",
    "TerminalWritten",
    "WhoAmI",
]


class ResourceUsage(BaseModel):
    """What a project's VM uses, measured in the VM."""

    workspace_bytes: int | None = None
    max_storage_bytes: int
    cpu_percent: float | None = None
    cpu_count: int | None = None
    memory_used_bytes: int | None = None
    memory_limit_bytes: int | None = None
    disk_free_bytes: int | None = None
    suspended_bytes: int | None = Field(
        default=None, description="the VM's saved memory and state on disk while it sleeps"
    )
    load_average: list[float] | None = None
    storage_enforcement: str | None = Field(
        default=None,
        description="how max_storage_gb is kept on this project's driver: 'filesystem: ...' "
        "(the workspace cannot grow past it) or 'guard: ...'/'server checks: ...' (writers are "
        "stopped or refused past it, with the slack it leaves)",
    )
    note: str | None = None


class CostReport(BaseModel):
    """A project's spending in one calendar month (UTC), in US dollars."""

    project_id: str
    month: str = Field(description="YYYY-MM")
    priced_as: str | None = Field(description="the price table and size, e.g. fly shared-cpu-1x")
    so_far_usd: float = Field(description="from the month's start (or the project's) until now")
    projected_usd: float = Field(description="by the month's end, if the project stays as now")
    running_seconds: int
    stopped_seconds: int
    volume_gb: float
    prices_read_on: str


class ProjectInfo(BaseModel):
    """A project as an agent sees it."""

    project_id: str
    name: str
    description: str
    project_type: ProjectType
    status: VMStatus = Field(description="the VM's status")
    status_reason: str | None = Field(default=None, description="why, when stopped or failed")
    driver: str
    vm_id: str | None
    vm_url: str | None
    workspace_path: str | None
    owner_id: str
    agents: list[str]
    your_access: AccessLevel | None = None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime | None
    settings: ProjectSettings
    members: list[Member] | None = None
    usage: ResourceUsage | None = Field(
        default=None, description="CPU, memory and workspace disk use (get_project only)"
    )
    notes: list[str] | None = Field(default=None, description="what the caller should know")
    cost: CostReport | None = Field(
        default=None,
        description="this month's cost so far and projected, on a metered driver (get_project)",
    )

    @classmethod
    def of(cls, project: Project, access: AccessLevel | None = None) -> ProjectInfo:
        return cls(
            project_id=project.project_id,
            name=project.name,
            description=project.description,
            project_type=project.project_type,
            status=project.vm_status,
            status_reason=project.vm_status_reason,
            driver=project.driver,
            vm_id=project.vm_id,
            vm_url=project.vm_url,
            workspace_path=project.workspace_path,
            owner_id=project.owner_id,
            agents=project.agents,
            your_access=access,
            created_at=project.created_at,
            updated_at=project.updated_at,
            last_activity_at=project.last_activity_at,
            settings=project.settings,
        )


class ProjectList(BaseModel):
    projects: list[ProjectInfo]


class ProjectStatus(BaseModel):
    project_id: str
    status: VMStatus
    message: str


class DeleteResult(BaseModel):
    project_id: str
    deleted: bool
    message: str


class CommandResult(BaseModel):
    """The outcome of run_command. A non-zero exit_code is a normal result, not an error."""

    project_id: str
    execution_id: str
    status: ExecutionStatus
    exit_code: int | None = Field(description="the command's exit status; 128+N if killed by N")
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool = Field(description="output was longer than the limit; the middle is omitted")
    duration_ms: int | None
    queued_ms: int | None = None
    reason: str | None = Field(default=None, description="why it did not complete normally")
    next_since: int = Field(
        default=0, description="cursor for read_command_output to continue after this output"
    )


class CommandOutput(BaseModel):
    """Output of an execution after a cursor; follow a running command by passing next_since."""

    execution_id: str
    status: ExecutionStatus
    exit_code: int | None
    stdout: str
    stderr: str
    next_since: int
    finished: bool
    reason: str | None = None


class ExecutionList(BaseModel):
    project_id: str
    max_concurrent_executions: int | None
    executions: list[Execution]


class ExecutionHistory(BaseModel):
    project_id: str
    executions: list[Execution]
    next_cursor: str | None = Field(
        default=None,
        description="pass as cursor to read on from here (newest_first: null at the oldest)",
    )
    has_more: bool = Field(default=False, description="more executions are waiting after these")


class TerminalInfo(BaseModel):
    """A terminal: who opened it, what it runs, its size and state."""

    project_id: str
    execution_id: str = Field(description="the terminal's id in every terminal_* call")
    agent_id: str = Field(description="who opened it: only they or an admin may type or close")
    command: str = Field(description="the program it runs, or the login shell")
    status: ExecutionStatus
    cols: int
    rows: int
    exit_code: int | None = None
    reason: str | None = Field(default=None, description="why it ended, when it did")
    queue_position: int | None = Field(
        default=None, description="while waiting for a slot: 1 = opens next"
    )
    queued_at: datetime | None = None
    started_at: datetime | None = None


class TerminalList(BaseModel):
    project_id: str
    terminals: list[TerminalInfo]


class TerminalWritten(BaseModel):
    execution_id: str
    written: int = Field(description="bytes typed")
    next_since: int = Field(
        description="the output cursor before this input: pass it to terminal_read as since"
    )


class TerminalView(BaseModel):
    """What a terminal shows, or printed, and whether it has ended."""

    execution_id: str
    status: ExecutionStatus
    exit_code: int | None = None
    reason: str | None = None
    finished: bool
    cols: int
    rows: int
    screen: str | None = Field(
        default=None,
        description="mode 'screen': its rows, newline-separated, blank rows at the bottom left out",
    )
    cursor_row: int | None = Field(default=None, description="0-based, on the screen")
    cursor_col: int | None = None
    alternate_screen: bool | None = Field(
        default=None, description="a full-screen program (vim, less, top) is showing"
    )
    title: str | None = Field(default=None, description="the window title the program set")
    output: str | None = Field(default=None, description="mode 'output': what came after since")
    encoding: Literal["text", "raw", "base64"] | None = None
    skipped: int = Field(
        default=0, description="bytes after since that are no longer kept (only the last are)"
    )
    next_since: int = Field(description="the cursor after this output: pass it as since")
    matched: bool | None = Field(default=None, description="whether wait_for matched")


class FileRead(BaseModel):
    project_id: str
    path: str
    content: str
    encoding: Literal["utf-8", "base64"]
    sha256: str = Field(description="of the whole file; pass as if_match to write safely")
    size: int
    offset: int = Field(description="first line returned (1-based), or first byte for base64")
    total_lines: int | None = None
    lines_returned: int | None = None
    truncated: bool = Field(description="more of the file remains after what was returned")


class FileWrite(BaseModel):
    project_id: str
    path: str
    sha256: str | None = Field(
        description="of the file's content; null after an append (read_file gives it)"
    )
    size: int
    created: bool


class EditResult(BaseModel):
    project_id: str
    path: str
    sha256: str = Field(description="of the file after the edit (unchanged on dry_run)")
    replacements: int
    diff: str
    diff_truncated: bool = Field(
        default=False, description="the diff was cut (the edit itself is whole)"
    )
    applied: bool = Field(description="false for dry_run")


class FileEntry(BaseModel):
    path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    modified_at: datetime


class FileList(BaseModel):
    project_id: str
    path: str
    entries: list[FileEntry]
    truncated: bool


class SearchHit(BaseModel):
    path: str
    line: int | None = None
    text: str | None = None


class SearchResults(BaseModel):
    project_id: str
    matches: list[SearchHit]
    files_scanned: int
    truncated: bool


class MoveResult(BaseModel):
    project_id: str
    source: str
    destination: str


class PathRemoval(BaseModel):
    project_id: str
    path: str
    removed: bool


class MemberList(BaseModel):
    project_id: str
    owner_id: str
    members: list[Member]


class LockResult(BaseModel):
    project_id: str
    lock: PathLock | None
    locked: bool = Field(description="whether the path is now locked by you")


class LockList(BaseModel):
    project_id: str
    locks: list[PathLock]


class EventsResult(BaseModel):
    project_id: str
    events: list[Event]
    last_event_id: int = Field(description="pass as since_id to read on from here")
    has_more: bool = Field(default=False, description="more events are waiting after these")


class WhoAmI(BaseModel):
    agent_id: str
    transport: Literal["stdio", "http", "memory", "rest", "websocket", "cli"]
    projects: dict[str, AccessLevel]
