"""Errors of the ProjectVM service: what agents see when a call cannot be done.

::

    ProjectVMError                  (guest_runtime.errors, which draws the guest's branch)
    ├── GuestError ...              a file or command request the guest agent refused
    ├── GuestUnreachable ...        no channel to the guest
    ├── DriverError ...             (vm_drivers.errors) the VM backend failed
    └── ServiceError
        ├── NotFound                (LookupError)      no such project/agent/execution for you
        ├── AccessDenied            (PermissionError)  your access level is too low
        ├── InvalidInput            (ValueError)       a parameter is wrong; the text says which
        ├── Conflict                                   the state changed under you
        │   └── StaleWrite                             if_match no longer holds (a precondition)
        ├── ProjectNotRunning                          the VM is stopped, failed or busy
        ├── LimitExceeded                              size, storage or rate limit
        ├── Unauthenticated         (PermissionError)  no or unknown identity
        └── StoreBusy               (TimeoutError)     another process holds the database
"""

from __future__ import annotations

from guest_runtime.errors import ProjectVMError

__all__ = [
    "AccessDenied",
    "Conflict",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "ProjectNotRunning",
    "ServiceError",
    "StaleWrite",
    "StoreBusy",
    "Unauthenticated",
]


class ServiceError(ProjectVMError):
    pass


class NotFound(ServiceError, LookupError):
    pass


class AccessDenied(ServiceError, PermissionError):
    pass


class InvalidInput(ServiceError, ValueError):
    pass


class Conflict(ServiceError):
    """The state changed under the caller: a stale ``if_match``, a lock held by another."""

    def __init__(
        self, message: str, *, current_sha256: str | None = None, changed_by: str | None = None
    ) -> None:
        super().__init__(message)
        self.current_sha256 = current_sha256
        self.changed_by = changed_by


class StaleWrite(Conflict):
    """A write's ``if_match`` no longer holds: the file changed (or appeared, or went) since
    the caller read it. REST answers it as a failed precondition (412)."""


class ProjectNotRunning(ServiceError):
    pass


class LimitExceeded(ServiceError):
    pass


class Unauthenticated(ServiceError, PermissionError):
    pass


class StoreBusy(ServiceError, TimeoutError):
    pass
