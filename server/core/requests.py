"""The arguments of every operation, defined once.

Each model is what one operation takes: the MCP tool's input schema is generated from it, the
service receives it, and REST bodies will be validated by it. Its docstring is the operation's
description, written for the agent or person choosing a call; field descriptions are the
parameter documentation they read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from server.domain.models import Environment
from server.domain.operations import Operation

__all__ = [
    "OPERATION_OF",
    "REQUESTS",
    "AssignAgent",
    "CancelExecution",
    "CloseTerminal",
    "CreateProject",
    "DeletePath",
    "DeleteProject",
    "Edit",
    "EditFile",
    "GetEvents",
    "GetExecutionHistory",
    "GetProject",
    "ListExecutions",
    "ListFiles",
    "ListLocks",
    "ListMembers",
    "ListProjects",
    "ListTerminals",
    "LockPath",
    "MovePath",
    "OpenTerminal",
    "ReadCommandOutput",
    "ReadFile",
    "RemoveAgent",
    "Request",
    "ResizeTerminal",
    "RunCommand",
    "SearchFiles",
    "SendInput",
    "StartProject",
    "StopProject",
    "TerminalRead",
    "TerminalWrite",
    "UnlockPath",
    "UpdateProjectSettings",
    "WhoAmI",
    "WriteFile",
]

ProjectId = Annotated[str, Field(description="the project's id, as returned by create_project")]
WorkspacePath = Annotated[
    str, Field(description="path relative to the workspace root (/workspace in the VM)")
]
ExecutionId = Annotated[
    str, Field(description="the execution's id, as returned by run_command or list_executions")
]
TerminalId = Annotated[
    str,
    Field(
        description="the terminal's execution id, as returned by open_terminal or list_terminals"
    ),
]
Columns = Annotated[int, Field(ge=10, le=500, description="width in characters")]
Rows = Annotated[int, Field(ge=2, le=200, description="height in lines")]
IfMatch = Annotated[
    str | None,
    Field(
        description="sha256 the file must still have (from read_file), or 'absent' to only "
        "create; on mismatch nothing is written and you get a conflict"
    ),
]


# How many entries a request's lists and objects may have. pydantic reports one error per bad
# entry: without a bound, one crafted body made a million errors (seconds of the event loop).
MAX_EDITS = 200  # as the guest agent's own cap (guest_runtime/agent/edits.py)
MAX_ENVIRONMENT_VARIABLES = 1000
MAX_SETTINGS = 64
MAX_KEYS = 1000  # named keys in one terminal_write


def _at_most(count: int, what: str) -> BeforeValidator:
    """Refuse an object or list of more than ``count`` entries before looking at any."""

    def check(value: Any) -> Any:
        if isinstance(value, dict | list) and len(value) > count:
            raise ValueError(f"{len(value)} {what} given; at most {count} are accepted")
        return value

    return BeforeValidator(check)


class _Closed(BaseModel):
    """Unknown fields are refused, and more fields than the model has at once (one error,
    not one per unknown name)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields):
            unknown = [str(name)[:40] for name in data if name not in cls.model_fields][:5]
            raise ValueError(
                f"{len(data)} fields given, but there are only {len(cls.model_fields)}; "
                f"unknown: {', '.join(unknown)}"
            )
        return data


class Request(_Closed):
    """The arguments of one operation."""


class ProjectRequest(Request):
    project_id: ProjectId


# -- projects ---------------------------------------------------------------------------------


class CreateProject(Request):
    """Create a project: an isolated VM with a persistent /workspace that agents share.

    Returns the project, including its project_id, which every other tool takes.
    """

    name: Annotated[str, Field(description="a short human-readable name")]
    description: str = ""
    project_type: Annotated[
        Literal["development", "analysis", "deployment", "sandbox"],
        Field(description="template for the VM; 'development' has the usual dev tools"),
    ] = "development"
    settings: Annotated[
        dict[str, Any] | None,
        _at_most(MAX_SETTINGS, "settings"),
        Field(
            description="optional settings: auto_sleep_minutes, max_storage_gb, "
            "environment_variables, network ('none' or 'egress'), cpus, memory_mb, "
            "max_concurrent_executions, allowed_tools"
        ),
    ] = None


class ListProjects(Request):
    """List the projects you own or are a member of, with their status."""


class GetProject(ProjectRequest):
    """Show one project: status, settings, members and your access level."""


class StartProject(ProjectRequest):
    """Start a stopped project's VM. Its workspace is as it was left."""


class StopProject(ProjectRequest):
    """Stop a project's VM to free resources. Files persist; running commands are killed."""


class DeleteProject(ProjectRequest):
    """Delete a project, its VM and its workspace for good. The audit history is kept."""


class UpdateProjectSettings(ProjectRequest):
    """Change a project's settings (admins only); the change is recorded as an event."""

    settings: Annotated[
        dict[str, Any],
        _at_most(MAX_SETTINGS, "settings"),
        Field(
            description='only the settings to change, e.g. {"max_concurrent_executions": '
            "2}; the others keep their values"
        ),
    ]


# -- commands ---------------------------------------------------------------------------------


class RunCommand(ProjectRequest):
    """Run a shell command in the project's VM and return exit_code, stdout and stderr.

    A non-zero exit_code is a normal result. Long output keeps its start and its end, with
    the middle omitted (truncated: true). Commands beyond the project's concurrency limit
    wait in a fair queue (queued_ms says how long). Cancelling this call kills the command.
    """

    command: Annotated[
        str, Field(description="a shell command line, run with bash -c (sh -c without bash)")
    ]
    cwd: Annotated[
        str | None, Field(description="working directory in the workspace; default its root")
    ] = None
    env: Annotated[
        Environment | None,
        _at_most(MAX_ENVIRONMENT_VARIABLES, "environment variables"),
        Field(
            description="extra environment variables; the project's environment_variables "
            "cannot be overridden"
        ),
    ] = None
    timeout_s: Annotated[
        float | None,
        Field(description="kill the command (and its children) after this many seconds"),
    ] = None
    stdin: Annotated[str | None, Field(description="text fed to the command's stdin")] = None
    wait_s: Annotated[
        float | None,
        Field(
            description="return after this many seconds even if the command still runs "
            "(status 'running' or 'queued'); follow it with read_command_output"
        ),
    ] = None
    keep_stdin_open: Annotated[
        bool, Field(description="keep stdin open so send_input can feed the command")
    ] = False


class ReadCommandOutput(Request):
    """Follow a command's output (any member may follow any execution of the project).

    Pass the returned next_since to get only what came after; finished: true at the end.
    """

    execution_id: ExecutionId
    since: Annotated[
        int, Field(ge=0, description="next_since from the previous call; 0 = from the start")
    ] = 0
    wait_s: Annotated[
        float, Field(ge=0, le=300, description="wait up to this long for new output")
    ] = 0


class SendInput(Request):
    """Write to the stdin of a running command started with keep_stdin_open."""

    execution_id: ExecutionId
    data: Annotated[str, Field(description="text written to the command's stdin")]
    eof: Annotated[bool, Field(description="close stdin after writing")] = False


class CancelExecution(Request):
    """Cancel a queued or running command (yours, or any if you are an admin)."""

    execution_id: ExecutionId


class ListExecutions(ProjectRequest):
    """Commands waiting and running now, with queue positions (1 = starts next)."""

    state: Annotated[
        Literal["queued", "running", "active"],
        Field(description="'active' = queued and running"),
    ] = "active"


class GetExecutionHistory(ProjectRequest):
    """The audit log of commands run in a project: who ran what, when, and how it ended.

    Pages: pass the returned next_cursor to read on; every execution appears exactly once,
    also while new ones arrive.
    """

    agent_id: Annotated[str | None, Field(description="only this agent's commands")] = None
    status: Annotated[
        str | None,
        Field(description="only this status: completed, failed, timed_out, cancelled, ..."),
    ] = None
    limit: Annotated[int, Field(ge=1, le=1000, description="at most this many per page")] = 50
    include_output: bool = False
    cursor: Annotated[
        str | None, Field(description="next_cursor from the previous page; none = first page")
    ] = None
    order: Annotated[
        Literal["newest_first", "oldest_first"],
        Field(description="newest_first (default) or oldest_first (to follow new ones)"),
    ] = "newest_first"


# -- files ------------------------------------------------------------------------------------


class ReadFile(ProjectRequest):
    """Read a file from the workspace. The sha256 lets a later write detect conflicts."""

    path: WorkspacePath
    offset: Annotated[
        int | None,
        Field(description="first line to return, counting from 1 (a byte offset for base64)"),
    ] = None
    limit: Annotated[
        int | None, Field(description="how many lines to return (bytes for base64)")
    ] = None
    encoding: Annotated[
        Literal["auto", "utf-8", "base64"],
        Field(description="'auto' returns text, or base64 if the file is not UTF-8"),
    ] = "auto"


class WriteFile(ProjectRequest):
    """Create or replace a file atomically (parent directories are created).

    Readers never see a half-written file. Pass if_match to avoid overwriting someone
    else's change.
    """

    path: WorkspacePath
    content: Annotated[str, Field(description="the whole new content")]
    encoding: Annotated[Literal["utf-8", "base64"], Field(description="how content is encoded")] = (
        "utf-8"
    )
    if_match: IfMatch = None
    append: Annotated[bool, Field(description="add to the end instead of replacing")] = False


class Edit(_Closed):
    old_text: str = Field(description="exact text to replace, including whitespace")
    new_text: str = Field(description="replacement text")
    replace_all: bool = Field(default=False, description="replace every occurrence")


class EditFile(ProjectRequest):
    """Replace exact pieces of text in a file and return a unified diff.

    Each old_text must occur exactly once (unless replace_all). The edit is atomic and
    fails with a conflict if the file changed meanwhile. At most 200 edits per call, their
    texts at most 1 MiB together; a diff longer than 256 KiB is cut (the edit is still whole).
    """

    path: WorkspacePath
    edits: Annotated[
        list[Edit],
        _at_most(MAX_EDITS, "edits"),
        Field(description="replacements applied in order, all or none (at most 200 per call)"),
    ]
    if_match: IfMatch = None
    dry_run: Annotated[bool, Field(description="only show the diff, change nothing")] = False


class ListFiles(ProjectRequest):
    """List a directory of the workspace (recursively if asked), sorted by path."""

    path: WorkspacePath = "."
    recursive: bool = False
    include_hidden: bool = True
    max_entries: Annotated[int, Field(ge=1, le=20000)] = 1000


class SearchFiles(ProjectRequest):
    """Search file contents (like grep -rn) or names (by glob) under a directory."""

    pattern: Annotated[
        str, Field(description="text to find in files; empty to match names by glob only")
    ] = ""
    path: WorkspacePath = "."
    regex: Annotated[bool, Field(description="treat pattern as a regular expression")] = False
    glob: Annotated[str | None, Field(description="only files whose name matches, e.g. '*.py'")] = (
        None
    )
    ignore_case: bool = False
    max_results: Annotated[int, Field(ge=1, le=5000)] = 200
    timeout_s: Annotated[
        float,
        Field(gt=0, le=300, description="the search is stopped with an error after this long"),
    ] = 30


class DeletePath(ProjectRequest):
    """Delete a file or directory in the workspace."""

    path: WorkspacePath
    recursive: Annotated[bool, Field(description="needed to delete a non-empty directory")] = False
    if_match: IfMatch = None


class MovePath(ProjectRequest):
    """Move or rename a file or directory within the workspace."""

    source: WorkspacePath
    destination: WorkspacePath
    overwrite: bool = False


# -- members ----------------------------------------------------------------------------------


class WhoAmI(Request):
    """Your agent id and your access level in each project you can see."""


class ListMembers(ProjectRequest):
    """The agents of a project and their access levels."""


class AssignAgent(ProjectRequest):
    """Give another agent access to a project, or change its level (admins only)."""

    agent_id: Annotated[str, Field(description="the agent to add or change")]
    access_level: Annotated[
        Literal["read_only", "read_write", "admin"],
        Field(
            description="read_only: read files, history, events, follow commands; "
            "read_write: also write files and run commands; admin: also settings, members, "
            "start, stop, delete"
        ),
    ]


class RemoveAgent(ProjectRequest):
    """Take an agent's access to a project away (admins; anyone may remove themselves)."""

    agent_id: Annotated[str, Field(description="the member to remove (yourself to leave)")]


# -- locks and events -------------------------------------------------------------------------


class LockPath(ProjectRequest):
    """Lock a file or directory: other agents' writes under it are refused until unlock or
    expiry. Advisory: commands in the VM are not checked. Locking again extends it."""

    path: WorkspacePath
    ttl_s: Annotated[
        float, Field(gt=0, le=86400, description="the lock expires after this many seconds")
    ] = 300


class UnlockPath(ProjectRequest):
    """Release a lock you hold (admins may release any)."""

    path: WorkspacePath


class ListLocks(ProjectRequest):
    """The project's current path locks, with holders and expiry times."""


class GetEvents(ProjectRequest):
    """What happened in a project, in order: files changed and by whom, commands queued,
    started and finished, VM status, members, locks, settings. Long-polls with wait_s.

    Pages: pass last_event_id as since_id to read on; has_more says whether more are waiting.
    """

    since_id: Annotated[
        int, Field(ge=0, description="last_event_id from the previous call; 0 = from start")
    ] = 0
    wait_s: Annotated[
        float, Field(ge=0, le=300, description="wait up to this long for a new event")
    ] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 200


# -- terminals --------------------------------------------------------------------------------


class OpenTerminal(ProjectRequest):
    """Open an interactive terminal in the project's VM, for programs that need a TTY: a
    REPL, an editor, a prompt, a pager, top. Type with terminal_write, look with
    terminal_read, end it with close_terminal.

    It holds one of the project's execution slots while open (beyond the limit it waits in
    the queue, status 'queued') and is recorded in the execution history (kind 'terminal').
    It is closed after idle_timeout_s without input, and when the project stops or sleeps.
    """

    command: Annotated[
        str | None,
        Field(
            description="a program to run instead of the login shell, e.g. 'python3' "
            "(run with bash -c); the terminal ends when it exits"
        ),
    ] = None
    cols: Columns = 80
    rows: Rows = 24
    cwd: Annotated[
        str | None, Field(description="working directory in the workspace; default its root")
    ] = None
    env: Annotated[
        Environment | None,
        Field(
            description="extra environment variables; the project's environment_variables "
            "cannot be overridden"
        ),
    ] = None
    idle_timeout_s: Annotated[
        float | None,
        Field(gt=0, description="close it after this long without input (default 1800 s)"),
    ] = None


class TerminalWrite(Request):
    """Type into a terminal you opened: text, then named keys (admins may type into any).

    Returns next_since: pass it to terminal_read as since to see what the program printed
    in answer.
    """

    execution_id: TerminalId
    text: Annotated[
        str,
        Field(
            description="typed as is; a newline is typed as Enter (with encoding 'base64': "
            "exactly these bytes)"
        ),
    ] = ""
    keys: Annotated[
        list[str],
        _at_most(MAX_KEYS, "keys"),
        Field(
            description="named keys typed after the text, in order: enter, tab, escape, "
            "backspace, delete, up, down, left, right, home, end, page-up, page-down, "
            "f1-f12, ctrl-a ... ctrl-z (ctrl-c interrupts, ctrl-d ends input), alt-<key>"
        ),
    ] = []
    encoding: Annotated[Literal["utf-8", "base64"], Field(description="how text is encoded")] = (
        "utf-8"
    )


class TerminalRead(Request):
    """Look at a terminal: its screen as text (mode 'screen'), or what it printed after a
    cursor (mode 'output'). Any member may watch any terminal of the project.

    With wait_s, first wait for output after since (or for wait_for to match), then for the
    output to settle, so one call after terminal_write sees the program's answer.
    """

    execution_id: TerminalId
    mode: Annotated[
        Literal["screen", "output"],
        Field(
            description="'screen': the rows the terminal shows now, with the cursor; "
            "'output': the bytes printed after since (the last 256 KiB are kept)"
        ),
    ] = "screen"
    since: Annotated[
        int,
        Field(ge=0, description="next_since from terminal_write or the previous terminal_read"),
    ] = 0
    wait_s: Annotated[
        float, Field(ge=0, le=300, description="wait up to this long for output or wait_for")
    ] = 0
    wait_for: Annotated[
        str | None,
        Field(
            description="a regular expression to wait for (up to wait_s) on the screen, or in "
            "the output after since, e.g. '>>> $' for a Python prompt"
        ),
    ] = None
    settle_s: Annotated[
        float,
        Field(
            ge=0,
            le=10,
            description="with wait_s and no wait_for: once output came, wait until it has "
            "been quiet this long (0: return at the first byte)",
        ),
    ] = 0.15
    encoding: Annotated[
        Literal["text", "raw", "base64"],
        Field(
            description="for mode 'output': 'text' without the terminal's escape sequences, "
            "'raw' with them, 'base64' the exact bytes"
        ),
    ] = "text"


class ResizeTerminal(Request):
    """Change a terminal's size; its program is told (SIGWINCH) and redraws."""

    execution_id: TerminalId
    cols: Columns
    rows: Rows


class CloseTerminal(Request):
    """Close a terminal (yours, or any if you are an admin): its programs are hung up
    (SIGHUP), then killed if they linger. Its exit is recorded in the history."""

    execution_id: TerminalId


class ListTerminals(ProjectRequest):
    """The project's open terminals (and those waiting for a slot), with who opened them."""


REQUESTS: dict[Operation, type[Request]] = {
    Operation.CREATE_PROJECT: CreateProject,
    Operation.LIST_PROJECTS: ListProjects,
    Operation.GET_PROJECT: GetProject,
    Operation.START_PROJECT: StartProject,
    Operation.STOP_PROJECT: StopProject,
    Operation.DELETE_PROJECT: DeleteProject,
    Operation.UPDATE_PROJECT_SETTINGS: UpdateProjectSettings,
    Operation.RUN_COMMAND: RunCommand,
    Operation.READ_COMMAND_OUTPUT: ReadCommandOutput,
    Operation.SEND_INPUT: SendInput,
    Operation.CANCEL_EXECUTION: CancelExecution,
    Operation.LIST_EXECUTIONS: ListExecutions,
    Operation.GET_EXECUTION_HISTORY: GetExecutionHistory,
    Operation.READ_FILE: ReadFile,
    Operation.WRITE_FILE: WriteFile,
    Operation.EDIT_FILE: EditFile,
    Operation.LIST_FILES: ListFiles,
    Operation.SEARCH_FILES: SearchFiles,
    Operation.DELETE_PATH: DeletePath,
    Operation.MOVE_PATH: MovePath,
    Operation.WHOAMI: WhoAmI,
    Operation.LIST_MEMBERS: ListMembers,
    Operation.ASSIGN_AGENT: AssignAgent,
    Operation.REMOVE_AGENT: RemoveAgent,
    Operation.LOCK_PATH: LockPath,
    Operation.UNLOCK_PATH: UnlockPath,
    Operation.LIST_LOCKS: ListLocks,
    Operation.GET_EVENTS: GetEvents,
    Operation.OPEN_TERMINAL: OpenTerminal,
    Operation.TERMINAL_WRITE: TerminalWrite,
    Operation.TERMINAL_READ: TerminalRead,
    Operation.RESIZE_TERMINAL: ResizeTerminal,
    Operation.CLOSE_TERMINAL: CloseTerminal,
    Operation.LIST_TERMINALS: ListTerminals,
}

OPERATION_OF: dict[type[Request], Operation] = {
    request: operation for operation, request in REQUESTS.items()
}
