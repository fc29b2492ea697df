"""The domain: projects, their settings, agents, memberships, executions and events."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from vm_drivers.base import VMStatus

__all__ = [
    "AGENT_ID_PATTERN",
    "MIN_AUTO_SLEEP_MINUTES",
    "STORED",
    "AccessLevel",
    "Agent",
    "Environment",
    "Event",
    "Execution",
    "ExecutionStatus",
    "Member",
    "PathLock",
    "Project",
    "ProjectSettings",
    "ProjectType",
    "VMStatus",
]

# The shortest idle time before auto-sleep (0.6 s): below it a project would sleep between two
# calls of one agent, and the sleeper would be asked to look ever more often.
MIN_AUTO_SLEEP_MINUTES = 0.01
# Validation context for settings read back from the database: rules added later repair what
# older versions stored instead of making the project unreadable.
STORED = {"stored": True}

AGENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ProjectType(enum.StrEnum):
    DEVELOPMENT = "development"
    ANALYSIS = "analysis"
    DEPLOYMENT = "deployment"
    SANDBOX = "sandbox"


class AccessLevel(enum.StrEnum):
    """What a member may do; each level includes the ones before it."""

    READ_ONLY = "read_only"
    READ_WRITE = "read_write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(AccessLevel).index(self)

    def allows(self, needed: AccessLevel) -> bool:
        return self.rank >= needed.rank


class ExecutionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # ran to its end; any exit code
    TIMED_OUT = "timed_out"  # killed because it outlived timeout_s
    CANCELLED = "cancelled"  # killed at a caller's request
    KILLED = "killed"  # killed because the project was stopped or deleted
    FAILED = "failed"  # could not run, or the VM died under it
    INTERRUPTED = "interrupted"  # the server went away while it ran

    @property
    def finished(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_environment(value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """Names a shell can use, values an environment can hold: say which rule each breaks."""
    if info.context == STORED:
        return value  # the guest refuses what older versions let through, command by command
    for name, text in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(
                f"{name!r} is not a valid environment variable name: use letters, digits and "
                "'_', not starting with a digit"
            )
        if "\x00" in text:
            raise ValueError(
                f"the value of {name} contains a NUL character, which no environment can hold; "
                "remove it (or pass binary data through a file)"
            )
    return value


# Environment variables as commands receive them; checked the same everywhere they enter.
Environment = Annotated[dict[str, str], AfterValidator(_check_environment)]


class ProjectSettings(_Model):
    """Per-project policy. Unknown keys are refused so a typo never silently does nothing."""

    auto_sleep_minutes: float = Field(
        default=30,
        ge=0,
        description="put the VM to sleep after this long without activity (at least "
        f"{MIN_AUTO_SLEEP_MINUTES}); 0 = never",
    )
    max_storage_gb: float = Field(default=10, gt=0, description="workspace size limit")
    allowed_tools: list[str] = Field(
        default_factory=list, description="MCP tools this project permits; empty = all"
    )
    environment_variables: Environment = Field(
        default_factory=dict, description="set in every command's environment"
    )
    network: Literal["none", "egress"] = Field(
        default="none", description="'egress' lets the VM reach the network"
    )
    cpus: float | None = Field(default=None, gt=0, description="CPU limit; null = driver default")
    memory_mb: int | None = Field(default=None, gt=0, description="memory limit in MiB")
    max_concurrent_executions: int = Field(
        default=4, ge=1, le=64, description="commands running at once; more wait in a queue"
    )
    pids_limit: int | None = Field(
        default=None, ge=16, description="processes in the VM; null = driver default"
    )
    command_allowlist: list[str] = Field(
        default_factory=list,
        description="advisory: if set, only commands matching one of these shell patterns run",
    )
    command_denylist: list[str] = Field(
        default_factory=list,
        description="advisory: commands matching any of these shell patterns are refused",
    )
    monthly_budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="on a metered driver (fly): warn (an event) at 80% of this month's "
        "spending, and at 100% act as budget_action says; null = no budget",
    )
    budget_action: Literal["warn", "stop"] = Field(
        default="warn",
        description="at 100% of monthly_budget_usd: 'warn' only, or 'stop' the VM (any later "
        "call that needs it starts it again, and is stopped again while over budget)",
    )

    @field_validator("auto_sleep_minutes")
    @classmethod
    def _sleep_is_never_or_real(cls, value: float, info: ValidationInfo) -> float:
        if 0 < value < MIN_AUTO_SLEEP_MINUTES:
            if info.context == STORED:
                return MIN_AUTO_SLEEP_MINUTES  # saved before the minimum existed
            raise ValueError(
                f"auto_sleep_minutes={value:g} is too short to be useful: use 0 (never sleep) "
                f"or at least {MIN_AUTO_SLEEP_MINUTES} minutes"
            )
        return value


class Member(_Model):
    agent_id: str
    access_level: AccessLevel
    added_at: datetime
    added_by: str | None = None


class Project(_Model):
    project_id: str
    name: str
    description: str = ""
    project_type: ProjectType
    driver: str
    vm_id: str | None
    vm_status: VMStatus
    vm_status_reason: str | None = None
    vm_url: str | None = None
    workspace_path: str | None = None
    owner_id: str
    agents: list[str] = Field(default_factory=list, description="agent ids with access")
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime | None = None
    settings: ProjectSettings = Field(default_factory=ProjectSettings)


class Agent(_Model):
    agent_id: str
    created_at: datetime
    last_seen_at: datetime | None = None
    has_token: bool = False


class Execution(_Model):
    execution_id: str
    project_id: str
    agent_id: str
    command: str
    kind: Literal["command", "terminal"] = Field(
        default="command",
        description="'terminal' for an interactive terminal (open_terminal); its command is "
        "the program or shell it ran, its output the screen it ended with",
    )
    cwd: str | None = None
    status: ExecutionStatus
    exit_code: int | None = None
    output: str | None = None
    error_output: str | None = None
    reason: str | None = None
    timed_out: bool = False
    truncated: bool = False
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    queued_ms: int | None = None
    queue_position: int | None = Field(
        default=None, description="for a queued execution: 1 = starts next"
    )
    seq: int | None = Field(
        default=None, description="its position in the project's log (history pages by it)"
    )


class PathLock(_Model):
    """An advisory lock: writes by other agents under ``path`` are refused until it expires."""

    path: str = Field(description="workspace-relative path; '' locks the whole workspace")
    agent_id: str
    acquired_at: datetime
    expires_at: datetime


class Event(_Model):
    event_id: int
    project_id: str | None
    agent_id: str | None
    kind: str
    data: dict[str, Any]
    created_at: datetime
