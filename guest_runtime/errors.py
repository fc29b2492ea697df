"""The root of ProjectVM's exceptions and the errors of the guest runtime.

Every exception ProjectVM raises derives from :class:`ProjectVMError`; each also inherits the
matching builtin so ``except FileNotFoundError`` keeps working. The whole tree::

    ProjectVMError
    ├── GuestError                    the guest agent refused or failed a request
    │   ├── PathOutsideWorkspace      (PermissionError)  '..', absolute or symlink escape
    │   ├── InvalidPath               (ValueError)       NUL byte, too many links
    │   ├── PathNotFound              (FileNotFoundError)
    │   ├── PathExists                (FileExistsError)
    │   ├── NotADirectory             (NotADirectoryError)
    │   ├── IsADirectory              (IsADirectoryError)
    │   ├── NotAFile                  (OSError)
    │   ├── DirectoryNotEmpty         (OSError)
    │   ├── WriteConflict                                if_match no longer holds
    │   ├── CommandNotFound           (FileNotFoundError)
    │   ├── UnknownExecution          (LookupError)
    │   ├── StdinClosed               (BrokenPipeError)
    │   ├── GuestPermissionDenied     (PermissionError)  not executable, not writable
    │   ├── WorkspaceFull             (OSError)          no space or quota left
    │   ├── GuestResourceExhausted    (OSError)          out of processes
    │   ├── ContentTooLarge           (ValueError)       a file or an edit's result over a cap
    │   ├── GuestTimeout              (TimeoutError)     work stopped at its deadline (search)
    │   ├── GuestIOError              (OSError)          any other I/O failure
    │   └── InvalidRequest            (ValueError)       bad params, oversized request
    ├── GuestUnreachable              (ConnectionError)  the channel to the guest is gone
    │   └── GuestProtocolError                           the peer does not speak our protocol
    ├── DriverError                   vm_drivers.errors: DriverUnavailable, VMCreationFailed, ...
    └── ServiceError                  server.errors: NotFound, AccessDenied, Conflict, ...
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CommandNotFound",
    "ContentTooLarge",
    "DirectoryNotEmpty",
    "GuestError",
    "GuestIOError",
    "GuestPermissionDenied",
    "GuestProtocolError",
    "GuestResourceExhausted",
    "GuestTimeout",
    "GuestUnreachable",
    "InvalidPath",
    "InvalidRequest",
    "IsADirectory",
    "NotADirectory",
    "NotAFile",
    "PathExists",
    "PathNotFound",
    "PathOutsideWorkspace",
    "ProjectVMError",
    "StdinClosed",
    "UnknownExecution",
    "WorkspaceFull",
    "WriteConflict",
    "guest_error_from_wire",
]


class ProjectVMError(Exception):
    """Base of every ProjectVM error. The message says what happened and what to do next."""


class GuestError(ProjectVMError):
    """The guest agent answered a request with an error."""

    kind = "guest_error"

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data or {}


class PathOutsideWorkspace(GuestError, PermissionError):
    kind = "path_outside_workspace"


class InvalidPath(GuestError, ValueError):
    kind = "invalid_path"


class PathNotFound(GuestError, FileNotFoundError):
    kind = "not_found"


class PathExists(GuestError, FileExistsError):
    kind = "exists"


class NotADirectory(GuestError, NotADirectoryError):
    kind = "not_a_directory"


class IsADirectory(GuestError, IsADirectoryError):
    kind = "is_a_directory"


class NotAFile(GuestError, OSError):
    kind = "not_a_file"


class DirectoryNotEmpty(GuestError, OSError):
    kind = "not_empty"


class WriteConflict(GuestError):
    """``if_match`` did not hold: the file changed since the caller read it."""

    kind = "conflict"

    @property
    def current_sha256(self) -> str | None:
        value = self.data.get("current_sha256")
        return value if isinstance(value, str) else None


class CommandNotFound(GuestError, FileNotFoundError):
    kind = "command_not_found"


class UnknownExecution(GuestError, LookupError):
    kind = "unknown_exec"


class StdinClosed(GuestError, BrokenPipeError):
    kind = "stdin_closed"


class InvalidRequest(GuestError, ValueError):
    kind = "invalid_params"


class GuestResourceExhausted(GuestError, OSError):
    """The VM is out of processes (its pids limit) or another resource."""

    kind = "resource_exhausted"


class WorkspaceFull(GuestError, OSError):
    """No space left on the workspace's filesystem or quota."""

    kind = "no_space"


class ContentTooLarge(GuestError, ValueError):
    """A file, or what an edit would make of it, is over a size cap; ``data`` says which
    (``what``: ``file`` or ``storage``), the size it has or would have, and the cap."""

    kind = "too_large"


class GuestTimeout(GuestError, TimeoutError):
    """The guest stopped a piece of work that passed its deadline (a search)."""

    kind = "timeout"


class GuestIOError(GuestError, OSError):
    kind = "io_error"


class GuestPermissionDenied(GuestError, PermissionError):
    """The VM refused: a file is not executable, a directory not writable."""

    kind = "permission_denied"


class GuestUnreachable(ProjectVMError, ConnectionError):
    """The channel to the guest agent is closed or never opened."""


class GuestProtocolError(GuestUnreachable):
    """The peer sent something that is not our protocol, or an incompatible version."""


_BY_KIND: dict[str, type[GuestError]] = {
    cls.kind: cls
    for cls in (
        PathOutsideWorkspace,
        InvalidPath,
        PathNotFound,
        PathExists,
        NotADirectory,
        IsADirectory,
        NotAFile,
        DirectoryNotEmpty,
        WriteConflict,
        CommandNotFound,
        UnknownExecution,
        StdinClosed,
        InvalidRequest,
        GuestPermissionDenied,
        WorkspaceFull,
        GuestIOError,
        GuestResourceExhausted,
        ContentTooLarge,
        GuestTimeout,
    )
}
_BY_KIND.update(
    {
        "finished": UnknownExecution,
        "path_changed": InvalidPath,
        "request_too_large": InvalidRequest,
        "parse_error": InvalidRequest,
        "invalid_request": InvalidRequest,
        "method_not_found": InvalidRequest,
    }
)


def guest_error_from_wire(error: Any) -> GuestError:
    """Turn a JSON-RPC error object from the agent into the matching exception."""
    if not isinstance(error, dict):
        return GuestError(f"the guest agent sent a malformed error: {error!r}")
    data = error.get("data")
    data = data if isinstance(data, dict) else {}
    message = str(error.get("message") or "the guest agent reported an error")
    cls = _BY_KIND.get(
        str(data.get("kind")), InvalidRequest if error.get("code") == -32602 else GuestError
    )
    return cls(message, data)
