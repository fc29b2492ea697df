"""A misbehaving guest or caller must not take anything down beyond its own channel or call."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import anyio
import anyio.abc
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.errors import GuestUnreachable
from server.domain.errors import StoreBusy
from server.store import Store

pytestmark = pytest.mark.anyio


async def test_a_malformed_message_closes_only_that_channel() -> None:
    ours, theirs = socket.socketpair()
    stream = await anyio.abc.SocketStream.from_socket(ours)
    guest_side = await anyio.abc.SocketStream.from_socket(theirs)
    survived = False
    async with anyio.create_task_group(), guest_side:
        async with GuestClient(stream) as client:
            await guest_side.send(b'{"jsonrpc":"2.0","method":"exec.output","params":[1]}\n')
            with anyio.fail_after(10):
                await client.wait_closed()
            assert "not an object" in client.close_reason
            with pytest.raises(GuestUnreachable):
                await client.call("hello")
        survived = True
    assert survived


async def test_a_write_cancelled_while_waiting_for_the_database_leaves_it_usable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    async with await Store.open(path, busy_timeout_s=1) as store:
        async with store.transaction():
            await store.agents.ensure("alice")
        holder = sqlite3.connect(path)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:

            async def add_bob_but_give_up() -> None:
                with anyio.move_on_after(0.1):  # the caller gives up while BEGIN waits
                    async with store.transaction():
                        await store.agents.ensure("bob")

            with pytest.raises(StoreBusy, match="another ProjectVM process"):
                await add_bob_but_give_up()
        finally:
            holder.rollback()
            holder.close()
        async with store.transaction():
            await store.agents.ensure("carol")
        assert {a.agent_id for a in await store.agents.list()} == {"alice", "carol"}
        assert await store.integrity_check() == "ok"
