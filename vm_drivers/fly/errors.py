"""Machines API errors translated into the ProjectVM error tree, at the driver's boundary.

Every HTTP status class has a home (``STATUS_TRANSLATIONS`` plus the 4xx/5xx fall-backs), and
``insufficient_capacity`` is recognised whatever its status. Messages keep Fly's own text and
``fly-request-id`` and add what to do next.
"""

from __future__ import annotations

from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverTimeout,
    DriverUnavailable,
    VMNotFound,
    VMOperationFailed,
    VMResourceExhausted,
)
from vm_drivers.fly.api import FlyAPIError

__all__ = ["STATUS_TRANSLATIONS", "translate_fly_error"]

TOKEN_HINT = (
    "set FLY_API_TOKEN to an org token (`fly tokens create org`) for the configured org_slug"
)

STATUS_TRANSLATIONS: dict[int, type[DriverError]] = {
    0: DriverUnavailable,  # no HTTP answer: the API is unreachable or timed out
    400: VMOperationFailed,
    401: DriverUnavailable,
    403: DriverUnavailable,
    404: VMNotFound,
    408: DriverTimeout,
    409: VMOperationFailed,  # a lease held by someone else
    412: VMOperationFailed,  # a precondition (version, state) no longer holds
    422: DriverConfigError,  # e.g. an app name taken by someone else
    429: VMResourceExhausted,  # rate limited beyond our retries
}

_NEXT_STEP: dict[type[DriverError], str] = {
    VMOperationFailed: "check the VM's state and try again",
    VMNotFound: "it may have been deleted outside ProjectVM",
    DriverTimeout: "the platform is slow; try again",
    DriverConfigError: "check the fly driver's settings",
    VMResourceExhausted: "Fly is rate limiting this account; try again in a few seconds",
}


def _class_for(status_code: int) -> type[DriverError]:
    if status_code in STATUS_TRANSLATIONS:
        return STATUS_TRANSLATIONS[status_code]
    return VMOperationFailed  # other 4xx: our request; 5xx: the platform


def translate_fly_error(err: FlyAPIError, action: str) -> DriverError:
    """The driver error for a failed Machines API call made while doing ``action``."""
    if err.fly_status == "insufficient_capacity":
        return VMResourceExhausted(
            f"{action} failed: Fly has no capacity for this Machine in the region ({err}); "
            "try again later or set another region in the fly driver's settings"
        )
    target = _class_for(err.status_code)
    if target is DriverUnavailable:
        if err.status_code in (401, 403):
            return DriverUnavailable(
                "fly", f"the Machines API refused the token ({err})", TOKEN_HINT
            )
        return DriverUnavailable(
            "fly",
            f"{action} failed: {err}",
            "check the network and the api_base_url (FLY_FLAPS_BASE_URL) setting",
        )
    if err.status_code >= 500:
        return VMOperationFailed(
            f"{action} failed: Fly reported a platform error ({err}); try again"
        )
    return target(f"{action} failed: {err}; {_NEXT_STEP[target]}")
