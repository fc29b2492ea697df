"""What a project's event feed records: one kind per change, each with a typed payload.

Operations record these explicitly, in the same transaction as the change they describe; the
store keeps them as ``(kind, data)`` rows and the feed hands ``data`` out as a plain object, so
a client sees the same fields it always has.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from server.domain.models import AccessLevel, ExecutionStatus, ProjectType, VMStatus
from vm_drivers.base import Billing

__all__ = [
    "EVENT_PAYLOADS",
    "BudgetStopped",
    "BudgetWarning",
    "EventKind",
    "EventPayload",
    "ExecutionFinished",
    "ExecutionQueued",
    "ExecutionStarted",
    "FileDeleted",
    "FileEdited",
    "FileMoved",
    "FileWritten",
    "LockAcquired",
    "LockReleased",
    "MemberAssigned",
    "MemberRemoved",
    "ProjectCreated",
    "ProjectDeleted",
    "SettingsUpdated",
    "VMRecovered",
    "VMRecreated",
    "VMSlept",
    "VMStatusChanged",
    "VMWoken",
]


class EventKind(enum.StrEnum):
    PROJECT_CREATED = "project.created"
    PROJECT_DELETED = "project.deleted"
    SETTINGS_UPDATED = "settings.updated"
    MEMBER_ASSIGNED = "member.assigned"
    MEMBER_REMOVED = "member.removed"
    VM_STATUS = "vm.status"
    VM_RECREATED = "vm.recreated"
    VM_RECOVERED = "vm.recovered"
    VM_SLEPT = "vm.slept"
    VM_WOKEN = "vm.woken"
    EXECUTION_QUEUED = "execution.queued"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_FINISHED = "execution.finished"
    FILE_WRITTEN = "file.written"
    FILE_EDITED = "file.edited"
    FILE_MOVED = "file.moved"
    FILE_DELETED = "file.deleted"
    LOCK_ACQUIRED = "lock.acquired"
    LOCK_RELEASED = "lock.released"
    BUDGET_WARNING = "budget.warning"
    BUDGET_STOPPED = "budget.stopped"


class EventPayload(BaseModel):
    """The data of one kind of event; ``kind`` is fixed per subclass."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[EventKind]

    def data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ProjectCreated(EventPayload):
    kind = EventKind.PROJECT_CREATED
    name: str
    project_type: ProjectType


class ProjectDeleted(EventPayload):
    kind = EventKind.PROJECT_DELETED


class SettingsUpdated(EventPayload):
    kind = EventKind.SETTINGS_UPDATED
    changed: dict[str, dict[str, Any]]  # setting -> {"from": old, "to": new}


class MemberAssigned(EventPayload):
    kind = EventKind.MEMBER_ASSIGNED
    member: str
    access_level: AccessLevel


class MemberRemoved(EventPayload):
    kind = EventKind.MEMBER_REMOVED
    member: str


class VMStatusChanged(EventPayload):
    kind = EventKind.VM_STATUS
    status: VMStatus
    reason: str | None = None
    vm_id: str | None = None
    # For a metered driver, when the VM starts running: what it is billed as from now on.
    billing: Billing | None = None


class VMRecreated(EventPayload):
    kind = EventKind.VM_RECREATED
    vm_id: str
    lost: str


class VMRecovered(EventPayload):
    kind = EventKind.VM_RECOVERED
    was: VMStatus
    reason: str


class VMSlept(EventPayload):
    kind = EventKind.VM_SLEPT
    idle_s: float
    memory_kept: bool = False


class VMWoken(EventPayload):
    kind = EventKind.VM_WOKEN
    was: str | None = None


class ExecutionQueued(EventPayload):
    kind = EventKind.EXECUTION_QUEUED
    execution_id: str
    command: str
    terminal: bool | None = None  # true for an interactive terminal (open_terminal)


class ExecutionStarted(EventPayload):
    kind = EventKind.EXECUTION_STARTED
    execution_id: str
    queued_ms: int


class ExecutionFinished(EventPayload):
    kind = EventKind.EXECUTION_FINISHED
    execution_id: str
    status: ExecutionStatus
    exit_code: int | None
    duration_ms: int | None
    reason: str | None = None

    def data(self) -> dict[str, Any]:
        # exit_code and duration_ms are part of every finish, even when unknown (null).
        data = self.model_dump(mode="json", exclude={"reason"})
        if self.reason:
            data["reason"] = self.reason
        return data


class FileWritten(EventPayload):
    kind = EventKind.FILE_WRITTEN
    path: str
    sha256: str | None = None  # None after an append: the whole file is not hashed again
    size: int


class FileEdited(EventPayload):
    kind = EventKind.FILE_EDITED
    path: str
    sha256: str
    replacements: int


class FileMoved(EventPayload):
    kind = EventKind.FILE_MOVED
    path: str
    source: str


class FileDeleted(EventPayload):
    kind = EventKind.FILE_DELETED
    path: str


class LockAcquired(EventPayload):
    kind = EventKind.LOCK_ACQUIRED
    path: str
    expires_at: datetime


class LockReleased(EventPayload):
    kind = EventKind.LOCK_RELEASED
    path: str


class BudgetWarning(EventPayload):
    kind = EventKind.BUDGET_WARNING
    month: str
    spent_usd: float
    budget_usd: float
    percent: int


class BudgetStopped(EventPayload):
    kind = EventKind.BUDGET_STOPPED
    month: str
    spent_usd: float
    budget_usd: float


EVENT_PAYLOADS: dict[EventKind, type[EventPayload]] = {
    payload.kind: payload
    for payload in (
        ProjectCreated,
        ProjectDeleted,
        SettingsUpdated,
        MemberAssigned,
        MemberRemoved,
        VMStatusChanged,
        VMRecreated,
        VMRecovered,
        VMSlept,
        VMWoken,
        ExecutionQueued,
        ExecutionStarted,
        ExecutionFinished,
        FileWritten,
        FileEdited,
        FileMoved,
        FileDeleted,
        LockAcquired,
        LockReleased,
        BudgetWarning,
        BudgetStopped,
    )
}
