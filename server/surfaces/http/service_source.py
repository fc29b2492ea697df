"""How the HTTP surfaces reach the service, which lives (and may be absent) in the lifespan."""

from __future__ import annotations

from collections.abc import Callable

from server.core.service import ProjectService

__all__ = ["ServiceSource"]

# The running service, or None while the server starts or stops.
ServiceSource = Callable[[], ProjectService | None]
