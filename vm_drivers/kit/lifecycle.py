"""Drivers are async context managers: ``async with driver:`` releases what it holds."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["ClosingDriver"]


class ClosingDriver:
    """Mixin: ``async with`` closes the driver with its ``aclose``."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
