"""Test environments for drivers whose backend needs setting up before the suite can run them.

A driver listed here runs once per variant, with the options its environment yields (for
example a fake's path, or a mode); the others run once, by name, with default options.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from tests.fakes import lima
from vm_drivers.registry import available_driver_names

__all__ = ["Backend", "backends"]

Environment = Callable[[], AbstractAsyncContextManager[dict[str, Any]]]


@asynccontextmanager
async def _defaults() -> AsyncIterator[dict[str, Any]]:
    yield {}


@dataclass(frozen=True)
class Backend:
    """One way to run the suite: a parameter id, the driver's name and its environment."""

    id: str
    driver: str
    environment: Environment = _defaults
    unavailable: Callable[[], str | None] = lambda: None


VARIANTS: dict[str, list[Backend]] = {
    # No Lima here: the fake limactl runs instances as bubblewrap sandboxes (tests/fakes).
    "lima": [
        Backend("lima", "lima", lima.per_project_environment, lima.missing_tools),
        Backend("lima-shared", "lima", lima.shared_environment, lima.missing_tools),
    ],
}


def backends() -> list[Backend]:
    found: list[Backend] = []
    for name in available_driver_names():
        found.extend(VARIANTS.get(name, [Backend(name, name)]))
    return found
