"""The channel contract: a VM has at most one open channel to its guest agent.

Opening a new channel closes the previous one; calls in flight on it fail, and the guest
agent, seeing its peer gone, kills the commands started through it. Every driver keeps its
channels in a :class:`ChannelSlots`, so the rule is the same everywhere.
"""

from __future__ import annotations

import anyio
import anyio.abc

__all__ = ["ChannelSlots", "SlotStream"]


class SlotStream(anyio.abc.ByteStream):
    """A channel held in a slot: closing it frees the slot (if it is still the current one)."""

    def __init__(self, slots: ChannelSlots, vm_id: str, stream: anyio.abc.ByteStream) -> None:
        self._slots = slots
        self.vm_id = vm_id
        self.stream = stream

    async def send(self, item: bytes) -> None:
        await self.stream.send(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.stream.receive(max_bytes)

    async def aclose(self) -> None:
        self._slots._release(self)
        await self.stream.aclose()


class ChannelSlots:
    def __init__(self) -> None:
        self._current: dict[str, SlotStream] = {}

    async def replace(self, vm_id: str, stream: anyio.abc.ByteStream) -> SlotStream:
        """Make ``stream`` the VM's channel, closing the one before it."""
        await self.close(vm_id)
        slot = SlotStream(self, vm_id, stream)
        self._current[vm_id] = slot
        return slot

    def current(self, vm_id: str) -> SlotStream | None:
        return self._current.get(vm_id)

    def _release(self, slot: SlotStream) -> None:
        if self._current.get(slot.vm_id) is slot:
            del self._current[slot.vm_id]

    async def close(self, vm_id: str) -> None:
        slot = self._current.pop(vm_id, None)
        if slot is not None:
            with anyio.CancelScope(shield=True):
                await slot.stream.aclose()

    async def close_all(self) -> None:
        for vm_id in list(self._current):
            await self.close(vm_id)
