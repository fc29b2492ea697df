"""Errors raised by VM drivers; backend errors are translated to these at the driver boundary.

::

    ProjectVMError                      (guest_runtime.errors)
    └── DriverError
        ├── DriverUnavailable           (RuntimeError)   backend missing; carries a setup hint
        ├── DriverConfigError           (ValueError)     the driver's configuration is invalid
        ├── VMNotFound                  (LookupError)    no VM with that id
        ├── VMCreationFailed            (RuntimeError)
        ├── VMOperationFailed           (RuntimeError)   start/stop/destroy went wrong
        ├── VMResourceExhausted         (RuntimeError)   out of memory/disk/quota on the backend
        └── DriverTimeout               (TimeoutError)   the backend did not answer in time
    GuestUnreachable                    (ConnectionError) re-exported: no channel to the guest
"""

from __future__ import annotations

from guest_runtime.errors import GuestUnreachable, ProjectVMError

__all__ = [
    "DriverConfigError",
    "DriverError",
    "DriverTimeout",
    "DriverUnavailable",
    "GuestUnreachable",
    "VMCreationFailed",
    "VMNotFound",
    "VMOperationFailed",
    "VMResourceExhausted",
]


class DriverError(ProjectVMError):
    """A VM backend could not do what was asked."""


class DriverUnavailable(DriverError, RuntimeError):
    """The backend is not usable on this machine; ``hint`` says how to set it up."""

    def __init__(self, driver: str, reason: str, hint: str = "") -> None:
        message = f"the {driver} driver is unavailable: {reason}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)
        self.driver = driver
        self.reason = reason
        self.hint = hint


class DriverConfigError(DriverError, ValueError):
    pass


class VMNotFound(DriverError, LookupError):
    @classmethod
    def of(cls, vm_id: str, detail: str = "") -> VMNotFound:
        return cls(f"VM {vm_id!r} does not exist" + (f" ({detail})" if detail else ""))


class VMCreationFailed(DriverError, RuntimeError):
    pass


class VMOperationFailed(DriverError, RuntimeError):
    pass


class VMResourceExhausted(DriverError, RuntimeError):
    pass


class DriverTimeout(DriverError, TimeoutError):
    pass
