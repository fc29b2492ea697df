"""Files: round trips, ranges, atomic writes, conflicts, confinement and listing."""

from __future__ import annotations

import hashlib

import anyio
import pytest

from guest_runtime.client import GuestClient
from guest_runtime.errors import (
    DirectoryNotEmpty,
    InvalidPath,
    PathExists,
    PathNotFound,
    PathOutsideWorkspace,
    WriteConflict,
)

from .running import run

pytestmark = pytest.mark.anyio


async def test_text_and_binary_files_round_trip_with_their_sha256(guest: GuestClient) -> None:
    binary = bytes(range(256)) * 100
    for path, data in (("a.txt", "héllo wörld\n".encode()), ("deep/b/c.bin", binary)):
        written = await guest.write_file(path, data)
        assert written.sha256 == hashlib.sha256(data).hexdigest()
        read = await guest.read_file(path)
        assert (read.data, read.sha256, read.size) == (data, written.sha256, len(data))
    _, out, _, _ = await run(guest, "sha256sum deep/b/c.bin")
    assert out.split()[0].decode() == hashlib.sha256(binary).hexdigest()


async def test_line_and_byte_ranges(guest: GuestClient) -> None:
    await guest.write_file("lines.txt", b"".join(f"line {i}\n".encode() for i in range(1, 11)))
    part = await guest.read_file("lines.txt", line_offset=2, line_limit=3)
    assert part.data == b"line 3\nline 4\nline 5\n"
    assert (part.total_lines, part.line_count, part.eof) == (10, 3, False)
    end = await guest.read_file("lines.txt", line_offset=8)
    assert (end.data, end.eof) == (b"line 9\nline 10\n", True)
    chunk = await guest.read_file("lines.txt", offset=5, length=2)
    assert chunk.data == b"1\n"


async def test_writes_are_atomic_for_a_concurrent_reader(guest: GuestClient) -> None:
    first, second = b"A" * 300_000, b"B" * 300_000
    await guest.write_file("shared.txt", first)
    reader = (
        'python3 -c "\n'
        "import sys\n"
        "seen = set()\n"
        "for _ in range(3000):\n"
        "    data = open('shared.txt', 'rb').read()\n"
        "    kind = {b'A' * 300000: 'A', b'B' * 300000: 'B'}.get(data, 'MIXED')\n"
        "    seen.add(kind)\n"
        "print(sorted(seen))\n"
        '"'
    )
    handle = await guest.start_exec(reader)
    for round_number in range(60):
        await guest.write_file("shared.txt", second if round_number % 2 == 0 else first)
    output = b""
    with anyio.fail_after(120):
        async for event in handle.events():
            output += getattr(event, "data", b"")
    assert b"MIXED" not in output
    assert output.startswith(b"['A'")


async def test_if_match_guards_against_lost_updates(guest: GuestClient) -> None:
    created = await guest.write_file("doc.md", b"v1", if_match="absent")
    with pytest.raises(WriteConflict) as conflict:
        await guest.write_file("doc.md", b"again", if_match="absent")
    assert conflict.value.current_sha256 == created.sha256
    updated = await guest.write_file("doc.md", b"v2", if_match=created.sha256)
    with pytest.raises(WriteConflict):
        await guest.write_file("doc.md", b"v3", if_match=created.sha256)
    with pytest.raises(WriteConflict):
        await guest.remove("doc.md", if_match=created.sha256)
    assert await guest.remove("doc.md", if_match=updated.sha256) == (True, "doc.md")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "escape/etc/passwd"])
async def test_paths_leaving_the_workspace_are_refused_for_read_and_write(
    guest: GuestClient, path: str
) -> None:
    await run(guest, "ln -sfn / escape; ln -sfn ../.. up")
    _, before, _, _ = await run(guest, "ls / | sort | md5sum")
    with pytest.raises(PathOutsideWorkspace):
        await guest.read_file(path)
    with pytest.raises(PathOutsideWorkspace):
        await guest.write_file(path, b"pwned")
    with pytest.raises(PathOutsideWorkspace):
        await guest.remove(path)
    _, after, _, _ = await run(guest, "ls / | sort | md5sum; test -e /x || echo no-x")
    assert after.startswith(before)
    assert after.endswith(b"no-x\n")


async def test_a_symlink_to_the_root_is_refused_but_inner_links_work(guest: GuestClient) -> None:
    await guest.write_file("real/file.txt", b"inside")
    await run(guest, "ln -s / rootlink; ln -s real/file.txt inner")
    with pytest.raises(PathOutsideWorkspace):
        await guest.read_file("rootlink/etc/hostname")
    with pytest.raises(PathOutsideWorkspace):
        await guest.write_file("rootlink/tmp/evil", b"x")
    assert (await guest.read_file("inner")).data == b"inside"
    _, out, _, _ = await run(guest, "test -e /tmp/evil && echo present || echo absent")
    assert out == b"absent\n"


async def test_a_nul_byte_in_a_path_is_refused(guest: GuestClient) -> None:
    with pytest.raises(InvalidPath):
        await guest.write_file("bad\x00name", b"x")


async def test_listing_search_move_and_remove(guest: GuestClient) -> None:
    await guest.write_file("src/app.py", b"def main():\n    return 42\n")
    await guest.write_file("src/util.py", b"VALUE = 42\n")
    await guest.write_file("README.md", b"# demo\n")
    listing = await guest.list_dir(".", recursive=True)
    assert [e.path for e in listing.entries] == ["README.md", "src", "src/app.py", "src/util.py"]
    found = await guest.search("42", glob="*.py")
    assert {(m.path, m.line) for m in found.matches} == {("src/app.py", 2), ("src/util.py", 1)}
    by_name = await guest.search(glob="*.md")
    assert [m.path for m in by_name.matches] == ["README.md"]
    await guest.move("src/util.py", "lib/util.py")
    with pytest.raises(PathExists):
        await guest.move("src/app.py", "lib/util.py")
    with pytest.raises(DirectoryNotEmpty):
        await guest.remove("src")
    assert await guest.remove("./src/", recursive=True) == (True, "src")
    with pytest.raises(PathNotFound):
        await guest.read_file("src/app.py")
    assert (await guest.read_file("lib/util.py")).data == b"VALUE = 42\n"


async def test_appends_extend_a_file(guest: GuestClient) -> None:
    await guest.write_file("log.txt", b"one\n")
    await guest.write_file("log.txt", b"two\n", append=True)
    assert (await guest.read_file("log.txt")).data == b"one\ntwo\n"


async def test_stat_reports_type_size_and_hash(guest: GuestClient) -> None:
    await guest.write_file("s.txt", b"12345")
    info = await guest.stat("s.txt", sha256=True)
    assert (info.exists, info.type, info.size) == (True, "file", 5)
    assert info.sha256 == hashlib.sha256(b"12345").hexdigest()
    assert not (await guest.stat("nope")).exists


async def test_many_mixed_calls_share_the_channel_concurrently(guest: GuestClient) -> None:
    """A command waits on the same channel until all 40 files exist: it can only end if the
    file calls were served while it ran."""
    seen: dict[int, bytes] = {}
    await guest.mkdir("many")
    waiter = await guest.start_exec(
        "while [ $(ls many | wc -l) -lt 40 ]; do sleep 0.01; done; echo all-there", timeout_s=120
    )

    async def one(number: int) -> None:
        data = f"{number}\n".encode() * (number + 1)
        await guest.write_file(f"many/{number}.txt", data)
        seen[number] = (await guest.read_file(f"many/{number}.txt")).data
        listing = await guest.list_dir("many")
        assert f"many/{number}.txt" in {e.path for e in listing.entries}

    async with anyio.create_task_group() as group:
        for number in range(40):
            group.start_soon(one, number)
    assert seen == {n: f"{n}\n".encode() * (n + 1) for n in range(40)}
    output = b"".join([getattr(event, "data", b"") async for event in waiter.events()])
    assert output == b"all-there\n"
    assert waiter.exit is not None
    assert not waiter.exit.timed_out
