"""The driver kit's pieces, each on its own: records, naming, locks, streams, channel slots."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.stapled import StapledObjectStream
from pydantic import BaseModel

from vm_drivers.errors import VMNotFound, VMOperationFailed
from vm_drivers.kit.channels import ChannelSlots
from vm_drivers.kit.locks import KeyedLocks
from vm_drivers.kit.naming import check_vm_id, short_name, vm_id_for
from vm_drivers.kit.records import RecordStore
from vm_drivers.kit.streams import MultiplexedStream, PrefixedStream, line_handshake

pytestmark = pytest.mark.anyio


class Record(BaseModel):
    vm_id: str
    size: int


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe pair (what a socket would be)."""

    def __init__(self, inbox: StapledObjectStream[bytes]) -> None:
        self._pipe = inbox
        self.closed = False

    async def send(self, item: bytes) -> None:
        await self._pipe.send(item)

    async def send_eof(self) -> None:
        await self._pipe.send_stream.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._pipe.receive()
        except anyio.EndOfStream:
            raise
        except anyio.ClosedResourceError:
            raise anyio.EndOfStream from None

    async def aclose(self) -> None:
        self.closed = True
        await self._pipe.aclose()


Pipe = Callable[[], tuple[MemoryByteStream, MemoryByteStream]]


@pytest.fixture
async def pipe() -> AsyncIterator[Pipe]:
    """``pipe()`` makes a connected pair; all are closed after the test."""
    made: list[MemoryByteStream] = []

    def make() -> tuple[MemoryByteStream, MemoryByteStream]:
        a_send, b_receive = anyio.create_memory_object_stream[bytes](100)
        b_send, a_receive = anyio.create_memory_object_stream[bytes](100)
        pair = (
            MemoryByteStream(StapledObjectStream(a_send, a_receive)),
            MemoryByteStream(StapledObjectStream(b_send, b_receive)),
        )
        made.extend(pair)
        return pair

    yield make
    for stream in made:
        await stream._pipe.aclose()


def test_records_are_saved_loaded_listed_and_removed(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "vms", Record, lambda r: r.vm_id)
    store.save(Record(vm_id="pvm-a", size=1))
    store.save(Record(vm_id="pvm-b", size=2))
    store.save(Record(vm_id="pvm-a", size=3))
    assert store.load("pvm-a") == Record(vm_id="pvm-a", size=3)
    assert [r.vm_id for r in store.all()] == ["pvm-a", "pvm-b"]
    assert not list((tmp_path / "vms").glob("*.tmp"))  # nothing half-written is left
    store.remove("pvm-a")
    with pytest.raises(VMNotFound):
        store.load("pvm-a")


def test_a_corrupt_record_is_reported_not_replaced(tmp_path: Path) -> None:
    store = RecordStore(tmp_path, Record, lambda r: r.vm_id)
    (tmp_path / "pvm-x.json").write_text("{not json")
    with pytest.raises(VMOperationFailed, match="corrupt"):
        store.load("pvm-x")
    assert store.all() == []
    assert (tmp_path / "pvm-x.json").read_text() == "{not json"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_vm_ids_that_could_escape_a_directory_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(VMNotFound):
        check_vm_id(bad)
    with pytest.raises(VMNotFound):
        RecordStore(tmp_path, Record, lambda r: r.vm_id).load(bad)


def test_names_derive_from_project_ids_and_fit_short_limits() -> None:
    assert vm_id_for("prj_0123456789abcdef") == "pvm-prj_0123456789abcdef"
    tap = short_name("pvm-prj_0123456789abcdef", 15, prefix="tap")
    assert len(tap) == 15
    assert tap.startswith("tap")
    assert tap == short_name("pvm-prj_0123456789abcdef", 15, prefix="tap")
    assert tap != short_name("pvm-prj_fedcba9876543210", 15, prefix="tap")


async def test_keyed_locks_serialise_one_key_and_are_forgotten_when_free() -> None:
    locks = KeyedLocks()
    assert locks("a") is locks("a")
    assert locks("a") is not locks("b")
    async with locks("a"):
        locks.forget("a")  # held: kept
        assert locks("a").locked()
    locks.forget("a")
    assert not locks("a").locked()


async def test_a_line_handshake_keeps_the_bytes_after_the_reply(pipe: Pipe) -> None:
    host, guest = pipe()
    async with anyio.create_task_group() as group:

        async def answer() -> None:
            assert await guest.receive() == b"CONNECT 52\n"
            await guest.send(b'OK 1073741824\n{"jsonrpc"')
            await guest.send(b':"2.0"}\n')

        group.start_soon(answer)
        reply, stream = await line_handshake(host, b"CONNECT 52\n", timeout_s=5)
    assert reply == b"OK 1073741824"
    assert await stream.receive() == b'{"jsonrpc"'
    assert await stream.receive() == b':"2.0"}\n'


async def test_a_handshake_that_ends_before_a_reply_fails(pipe: Pipe) -> None:
    host, guest = pipe()
    await guest.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await line_handshake(host, b"CONNECT 52\n", timeout_s=5)


async def test_a_prefixed_stream_delivers_its_prefix_in_pieces_first(pipe: Pipe) -> None:
    host, guest = pipe()
    stream = PrefixedStream(host, b"abcdef")
    await guest.send(b"ghi")
    assert await stream.receive(4) == b"abcd"
    assert await stream.receive() == b"ef"
    assert await stream.receive() == b"ghi"


async def test_a_multiplexed_stream_yields_stdout_frames_and_keeps_stderr_aside(pipe: Pipe) -> None:
    host, engine = pipe()
    stream = MultiplexedStream(host)

    def frame(kind: int, payload: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload

    whole = frame(1, b"hello ") + frame(2, b"agent log line\n") + frame(1, b"world")
    await engine.send(whole[:5])  # frames split anywhere
    await engine.send(whole[5:])
    await engine.send_eof()
    assert await stream.receive() == b"hello "
    assert await stream.receive() == b"world"
    assert stream.stderr_tail == b"agent log line\n"
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


async def test_a_new_channel_closes_the_one_before_it(pipe: Pipe) -> None:
    slots = ChannelSlots()
    first, _ = pipe()
    second, _ = pipe()
    held = await slots.replace("pvm-a", first)
    assert slots.current("pvm-a") is held
    newer = await slots.replace("pvm-a", second)
    assert first.closed
    assert not second.closed
    assert slots.current("pvm-a") is newer
    await held.aclose()  # closing a replaced channel leaves the newer one in place
    assert slots.current("pvm-a") is newer
    await newer.aclose()
    assert slots.current("pvm-a") is None
