"""Typed views of the guest agent's answers, as the host sees them."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from guest_runtime.agent import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "DirEntry",
    "ExecExit",
    "ExecOutput",
    "FileData",
    "FileEdit",
    "GuestInfo",
    "GuestStats",
    "ListResult",
    "SearchMatch",
    "SearchResult",
    "StatResult",
    "TermExit",
    "TermOutput",
    "UsageResult",
    "WriteResult",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GuestInfo(_Wire):
    protocol_version: int
    agent_version: str
    capabilities: list[str]
    root: str
    python: str = ""
    platform: str = ""
    hostname: str = ""
    pid: int = 0
    uid: int = 0
    command_uid: int | None = None  # commands run as another uid than the agent's: isolated
    command_gid: int | None = None


class ExecOutput(_Wire):
    exec_id: str
    seq: int
    stream: Literal["stdout", "stderr"]
    data: bytes
    tail: bool = False  # the end of an overflowing stream, sent after the exit of the process
    skipped: int = 0  # bytes dropped between the head and this tail

    @classmethod
    def from_wire(cls, params: dict[str, object]) -> ExecOutput:
        return cls.model_validate({**params, "data": base64.b64decode(str(params.get("data", "")))})


class ExecExit(_Wire):
    exec_id: str
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    killed: bool = False
    truncated: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    duration_ms: int = 0


class TermOutput(_Wire):
    term_id: str
    seq: int
    data: bytes
    # Set by the host's client, never by the guest: output it dropped just before this piece
    # because nobody took it (see guest_runtime.terminal).
    skipped: int = 0

    @classmethod
    def from_wire(cls, params: dict[str, object]) -> TermOutput:
        data = base64.b64decode(str(params.get("data", "")))
        return cls.model_validate({**params, "data": data, "skipped": 0})


class TermExit(_Wire):
    term_id: str
    exit_code: int | None
    signal: int | None = None
    closed: bool = False  # the host asked it to close (term.close, or the session ended)
    killed: bool = False  # what was left after the hang-up or the exit was killed
    output_bytes: int = 0
    duration_ms: int = 0


class FileData(_Wire):
    path: str
    data: bytes
    size: int
    sha256: str
    eof: bool
    offset: int | None = None
    length: int | None = None
    line_offset: int | None = None
    line_count: int | None = None
    total_lines: int | None = None

    @classmethod
    def from_wire(cls, result: dict[str, object]) -> FileData:
        return cls.model_validate({**result, "data": base64.b64decode(str(result.get("data", "")))})


class WriteResult(_Wire):
    path: str
    sha256: str | None  # None after an append (the whole file is not hashed again)
    size: int
    created: bool
    previous_sha256: str | None = None
    previous_size: int = 0


class FileEdit(_Wire):
    path: str
    sha256: str  # after the edit (before it, on a dry run)
    previous_sha256: str
    size: int
    previous_size: int
    replacements: int
    diff: str
    diff_truncated: bool = False
    applied: bool


class DirEntry(_Wire):
    path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: int
    mtime: float


class StatResult(_Wire):
    path: str
    exists: bool
    type: Literal["file", "directory", "symlink", "other"] | None = None
    size: int | None = None
    mode: int | None = None
    mtime: float | None = None
    sha256: str | None = None


class ListResult(_Wire):
    path: str
    entries: list[DirEntry]
    truncated: bool


class SearchMatch(_Wire):
    path: str
    line: int | None = None
    text: str | None = None


class SearchResult(_Wire):
    matches: list[SearchMatch]
    files_scanned: int
    truncated: bool


class UsageResult(_Wire):
    used_bytes: int
    files: int
    fs_total_bytes: int
    fs_free_bytes: int
    elapsed_ms: int
    # "filesystem": the workspace's own filesystem counted it; "walk": its tree was walked.
    method: Literal["filesystem", "walk"] = "walk"
    complete: bool = True  # False: the walk hit its deadline, used_bytes is a lower bound
    age_ms: int = 0  # how old the walk's count is


class GuestStats(_Wire):
    cpu_count: int | None = None
    cpu_percent: float | None = None
    load_average: list[float] = Field(default_factory=list)
    memory_used_bytes: int | None = None
    memory_limit_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    uptime_s: float | None = None
