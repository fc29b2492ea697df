"""Errors as RFC 9457 problem details (``application/problem+json``).

Every ProjectVM error becomes a problem whose ``detail`` is the very text an MCP client reads
(what happened, what to do next), with an HTTP status picked from the error tree here. The
table is keyed by class and searched along the class's MRO, so a new subclass inherits its
parent's status; a test checks that every class of the tree resolves to a status of its own
branch rather than the catch-all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from guest_runtime import errors as guest
from guest_runtime.errors import ProjectVMError
from server.domain import errors as service
from vm_drivers import errors as driver

__all__ = [
    "PROBLEM_JSON",
    "STATUS_OF",
    "Problem",
    "problem_of",
    "problem_response",
    "slug_of",
    "status_of",
]

PROBLEM_JSON = "application/problem+json"
API_DOCS = "/api/v1/docs"

# The most specific class wins (looked up along the MRO).
STATUS_OF: dict[type[BaseException], int] = {
    ProjectVMError: 500,
    # the service's own refusals
    service.ServiceError: 400,
    service.NotFound: 404,
    service.AccessDenied: 403,
    service.InvalidInput: 422,
    service.Conflict: 409,
    service.StaleWrite: 412,
    service.ProjectNotRunning: 409,
    service.LimitExceeded: 413,
    service.Unauthenticated: 401,
    service.StoreBusy: 503,
    # what the guest agent refused
    guest.GuestError: 502,
    guest.PathOutsideWorkspace: 403,
    guest.InvalidPath: 422,
    guest.PathNotFound: 404,
    guest.PathExists: 409,
    guest.NotADirectory: 422,
    guest.IsADirectory: 422,
    guest.NotAFile: 422,
    guest.DirectoryNotEmpty: 409,
    guest.WriteConflict: 412,
    guest.CommandNotFound: 422,
    guest.UnknownExecution: 404,
    guest.StdinClosed: 409,
    guest.GuestPermissionDenied: 403,
    guest.WorkspaceFull: 507,
    guest.GuestResourceExhausted: 503,
    guest.GuestIOError: 500,
    guest.InvalidRequest: 422,
    # the VM cannot be reached or the backend failed
    guest.GuestUnreachable: 503,
    driver.DriverError: 502,
    driver.DriverUnavailable: 503,
    driver.DriverConfigError: 500,
    driver.VMNotFound: 404,
    driver.VMCreationFailed: 502,
    driver.VMOperationFailed: 502,
    driver.VMResourceExhausted: 503,
    driver.DriverTimeout: 504,
}

# Worth a retry after a moment: the client is told so.
RETRY_AFTER_S: Mapping[int, int] = {503: 2, 504: 2}


def status_of(err: BaseException) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def slug_of(cls: type[BaseException]) -> str:
    """``StaleWrite`` -> ``stale-write``: the problem's type, an anchor of the API docs."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


def _title(cls: type[BaseException]) -> str:
    return slug_of(cls).replace("-", " ").capitalize()


class Problem(Exception):
    """A refusal made by the HTTP surface itself (bad JSON, a missing header, ...)."""

    def __init__(self, status: int, slug: str, title: str, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document (RFC 9457) with its extension members."""
        document: dict[str, Any] = {
            "type": f"{API_DOCS}#{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        return {**document, **self.extensions}


def problem_response(
    problem: Problem, instance: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = problem.body(instance)
    extra = dict(headers or {})
    if problem.status in RETRY_AFTER_S:
        extra.setdefault("Retry-After", str(RETRY_AFTER_S[problem.status]))
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=extra,
    )


def problem_of(err: ProjectVMError, operation: str | None = None) -> Problem:
    """The problem an error is, with what a client can act on (the current sha256, who)."""
    cls = type(err)
    extensions: dict[str, Any] = {"error": cls.__name__}
    if operation is not None:
        extensions["operation"] = operation
    if isinstance(err, service.Conflict):
        if err.current_sha256 is not None or isinstance(err, service.StaleWrite):
            extensions["current_sha256"] = err.current_sha256
        if err.changed_by is not None:
            extensions["changed_by"] = err.changed_by
    elif isinstance(err, guest.WriteConflict):
        extensions["current_sha256"] = err.current_sha256
    return Problem(status_of(err), slug_of(cls), _title(cls), str(err), **extensions)
