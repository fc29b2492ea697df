"""One live guest channel per project, opened on demand and re-opened after it drops.

A channel's ``GuestClient`` needs a task to read from it for as long as it lives, so each one is
held by a task in the pool's task group. Callers just ask for a project's client; if the last
one died (the VM restarted, the container was re-created), a fresh one is opened.
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from guest_runtime.client import GuestClient
from vm_drivers.base import VMDriver

__all__ = ["ChannelPool"]

log = logging.getLogger("projectvm.channels")


class ChannelPool:
    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self._clients: dict[str, GuestClient] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def client(self, key: str, driver: VMDriver, vm_id: str) -> GuestClient:
        """The live client for ``key`` (a project id), opening a channel if there is none."""
        current = self.current(key)
        if current is not None:
            return current
        async with self._locks.setdefault(key, anyio.Lock()):
            current = self.current(key)
            if current is not None:
                return current
            stream = await driver.open_channel(vm_id)
            client: GuestClient = await self._task_group.start(self._hold, stream)
            try:
                await client.hello()
            except BaseException:
                await client.aclose()
                raise
            self._clients[key] = client
            return client

    @staticmethod
    async def _hold(stream: anyio.abc.ByteStream, *, task_status: TaskStatus[GuestClient]) -> None:
        # Whatever ends this channel ends only this channel: never the pool's task group.
        try:
            async with GuestClient(stream) as client:
                task_status.started(client)
                await client.wait_closed()
        except Exception:
            log.exception("a guest channel ended with an error")

    def current(self, key: str) -> GuestClient | None:
        client = self._clients.get(key)
        return client if client is not None and not client.closed else None

    async def close(self, key: str) -> None:
        """Close ``key``'s channel (before the VM is stopped or destroyed)."""
        async with self._locks.setdefault(key, anyio.Lock()):
            client = self._clients.pop(key, None)
            if client is not None:
                await client.aclose()

    async def aclose(self) -> None:
        for key in list(self._clients):
            await self.close(key)
