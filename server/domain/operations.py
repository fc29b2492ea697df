"""Every operation a caller can ask of ProjectVM, and what each one needs.

One table says, per operation, the access level it takes, whether it counts as activity that
keeps the project awake (work in the VM or on its workspace; reading metadata does not),
whether a project's ``allowed_tools`` can forbid it, and how it behaves (read-only,
destructive, idempotent, reaching outside). MCP tools, REST routes and WebSocket messages are
all named after these operations, so one project setting governs every surface.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.domain.models import AccessLevel

__all__ = ["OPERATIONS", "Effect", "Operation", "OperationSpec", "spec_of"]


class Operation(enum.StrEnum):
    CREATE_PROJECT = "create_project"
    LIST_PROJECTS = "list_projects"
    GET_PROJECT = "get_project"
    START_PROJECT = "start_project"
    STOP_PROJECT = "stop_project"
    DELETE_PROJECT = "delete_project"
    UPDATE_PROJECT_SETTINGS = "update_project_settings"
    RUN_COMMAND = "run_command"
    READ_COMMAND_OUTPUT = "read_command_output"
    SEND_INPUT = "send_input"
    CANCEL_EXECUTION = "cancel_execution"
    LIST_EXECUTIONS = "list_executions"
    GET_EXECUTION_HISTORY = "get_execution_history"
    READ_FILE = "read_file"
    WRITE_FILE = "write_file"
    EDIT_FILE = "edit_file"
    LIST_FILES = "list_files"
    SEARCH_FILES = "search_files"
    DELETE_PATH = "delete_path"
    MOVE_PATH = "move_path"
    WHOAMI = "whoami"
    LIST_MEMBERS = "list_members"
    ASSIGN_AGENT = "assign_agent"
    REMOVE_AGENT = "remove_agent"
    LOCK_PATH = "lock_path"
    UNLOCK_PATH = "unlock_path"
    LIST_LOCKS = "list_locks"
    GET_EVENTS = "get_events"
    OPEN_TERMINAL = "open_terminal"
    TERMINAL_WRITE = "terminal_write"
    TERMINAL_READ = "terminal_read"
    RESIZE_TERMINAL = "resize_terminal"
    CLOSE_TERMINAL = "close_terminal"
    LIST_TERMINALS = "list_terminals"


class Effect(enum.Enum):
    """How an operation behaves, as MCP tool annotations and HTTP methods express it."""

    READ = "read"  # changes nothing; repeating it is harmless
    CREATE = "create"  # makes something new each time
    UPDATE = "update"  # changes state, not destructively; repeating it is harmless
    REMOVE = "remove"  # destroys or ends something; repeating it is harmless
    CHANGE = "change"  # may overwrite something; repeating it does it again
    COMMAND = "command"  # runs arbitrary code, which may reach outside


@dataclass(frozen=True)
class OperationSpec:
    level: AccessLevel | None  # the least level needed; None: not about one project
    effect: Effect
    activity: bool = False  # keeps the project awake (work in or on the VM, locks)
    always_allowed: bool = False  # allowed_tools cannot forbid it (no admin locks itself out)


_RO, _RW, _ADMIN = AccessLevel.READ_ONLY, AccessLevel.READ_WRITE, AccessLevel.ADMIN

OPERATIONS: dict[Operation, OperationSpec] = {
    Operation.CREATE_PROJECT: OperationSpec(None, Effect.CREATE, always_allowed=True),
    Operation.LIST_PROJECTS: OperationSpec(None, Effect.READ, always_allowed=True),
    Operation.WHOAMI: OperationSpec(None, Effect.READ, always_allowed=True),
    Operation.GET_PROJECT: OperationSpec(_RO, Effect.READ, always_allowed=True),
    Operation.START_PROJECT: OperationSpec(_ADMIN, Effect.UPDATE, activity=True),
    Operation.STOP_PROJECT: OperationSpec(_ADMIN, Effect.REMOVE),
    Operation.DELETE_PROJECT: OperationSpec(_ADMIN, Effect.REMOVE, always_allowed=True),
    Operation.UPDATE_PROJECT_SETTINGS: OperationSpec(_ADMIN, Effect.UPDATE, always_allowed=True),
    Operation.RUN_COMMAND: OperationSpec(_RW, Effect.COMMAND, activity=True),
    Operation.READ_COMMAND_OUTPUT: OperationSpec(_RO, Effect.READ),
    Operation.SEND_INPUT: OperationSpec(_RW, Effect.CHANGE, activity=True),
    Operation.CANCEL_EXECUTION: OperationSpec(_RW, Effect.REMOVE, activity=True),
    Operation.LIST_EXECUTIONS: OperationSpec(_RO, Effect.READ),
    Operation.GET_EXECUTION_HISTORY: OperationSpec(_RO, Effect.READ),
    Operation.READ_FILE: OperationSpec(_RO, Effect.READ, activity=True),
    Operation.LIST_FILES: OperationSpec(_RO, Effect.READ, activity=True),
    Operation.SEARCH_FILES: OperationSpec(_RO, Effect.READ, activity=True),
    Operation.WRITE_FILE: OperationSpec(_RW, Effect.CHANGE, activity=True),
    Operation.EDIT_FILE: OperationSpec(_RW, Effect.CHANGE, activity=True),
    Operation.MOVE_PATH: OperationSpec(_RW, Effect.CHANGE, activity=True),
    Operation.DELETE_PATH: OperationSpec(_RW, Effect.REMOVE, activity=True),
    Operation.LIST_MEMBERS: OperationSpec(_RO, Effect.READ, always_allowed=True),
    Operation.ASSIGN_AGENT: OperationSpec(_ADMIN, Effect.UPDATE),
    # Leaving needs no more than membership; removing someone else is the policy's call.
    Operation.REMOVE_AGENT: OperationSpec(_RO, Effect.REMOVE),
    Operation.LOCK_PATH: OperationSpec(_RW, Effect.UPDATE, activity=True),
    Operation.UNLOCK_PATH: OperationSpec(_RW, Effect.REMOVE, activity=True),
    Operation.LIST_LOCKS: OperationSpec(_RO, Effect.READ),
    Operation.GET_EVENTS: OperationSpec(_RO, Effect.READ),
    # A terminal is an execution: opening and typing are work in the VM; watching is not.
    Operation.OPEN_TERMINAL: OperationSpec(_RW, Effect.COMMAND, activity=True),
    Operation.TERMINAL_WRITE: OperationSpec(_RW, Effect.CHANGE, activity=True),
    Operation.TERMINAL_READ: OperationSpec(_RO, Effect.READ),
    Operation.RESIZE_TERMINAL: OperationSpec(_RW, Effect.UPDATE, activity=True),
    Operation.CLOSE_TERMINAL: OperationSpec(_RW, Effect.REMOVE, activity=True),
    Operation.LIST_TERMINALS: OperationSpec(_RO, Effect.READ),
}


def spec_of(operation: Operation) -> OperationSpec:
    return OPERATIONS[operation]
