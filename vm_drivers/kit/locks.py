"""A lock per key: one VM's lifecycle calls never interleave, different VMs' never wait."""

from __future__ import annotations

import anyio

__all__ = ["KeyedLocks"]


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, anyio.Lock] = {}

    def __call__(self, key: str) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    def forget(self, key: str) -> None:
        """Drop a key's lock once its VM is gone (unless someone holds or waits on it)."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and lock.statistics().tasks_waiting == 0:
            del self._locks[key]
