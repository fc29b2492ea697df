"""The guest's terminals at the protocol level: listing, refusals, and the host's bound on
output nobody takes."""

from __future__ import annotations

import anyio
import pytest

from guest_runtime.agent import methods
from guest_runtime.client import GuestClient
from guest_runtime.errors import InvalidRequest, StdinClosed, UnknownExecution
from guest_runtime.protocol import TermExit, TermOutput
from guest_runtime.terminal import MAX_QUEUED_BYTES

pytestmark = pytest.mark.anyio


async def test_open_terminals_are_listed_with_their_size(guest: GuestClient) -> None:
    handle = await guest.open_terminal("sleep 60", cols=90, rows=33)
    listed = await guest.call(methods.TERM_LIST)
    [entry] = listed["terminals"]
    assert (entry["term_id"], entry["pid"], entry["cols"], entry["rows"]) == (
        handle.term_id,
        handle.pid,
        90,
        33,
    )
    await handle.resize(100, 40)
    [entry] = (await guest.call(methods.TERM_LIST))["terminals"]
    assert (entry["cols"], entry["rows"]) == (100, 40)
    await handle.close(grace_s=1)
    assert (await guest.call(methods.TERM_LIST))["terminals"] == []


async def test_sizes_out_of_range_and_empty_commands_are_refused(guest: GuestClient) -> None:
    with pytest.raises(InvalidRequest, match="cols must be between 1 and 1000"):
        await guest.open_terminal("true", cols=0)
    with pytest.raises(InvalidRequest, match="command is empty"):
        await guest.open_terminal("  ")
    handle = await guest.open_terminal("sleep 60")
    with pytest.raises(InvalidRequest, match="rows must be between"):
        await handle.resize(80, 5000)
    await handle.close(grace_s=1)


async def test_a_terminal_that_ended_takes_no_input(guest: GuestClient) -> None:
    handle = await guest.open_terminal("true")
    async for _ in handle.events():
        pass
    with pytest.raises(UnknownExecution, match="no open terminal"):
        await handle.write(b"x")
    with pytest.raises(UnknownExecution):
        await handle.close()


async def test_output_nobody_takes_is_bounded_and_the_gap_is_reported(
    guest: GuestClient,
) -> None:
    produced = 3 * MAX_QUEUED_BYTES
    handle = await guest.open_terminal(f"head -c {produced} /dev/zero | tr '\\0' x")
    with anyio.fail_after(120):
        while (await guest.call(methods.TERM_LIST))["terminals"]:
            pass  # each look is a round trip; the output meanwhile piles up unread
        kept = skipped = 0
        exit_info: TermExit | None = None
        async for event in handle.events():
            if isinstance(event, TermOutput):
                kept += len(event.data)
                skipped += event.skipped
            else:
                exit_info = event
    assert exit_info is not None
    assert exit_info.output_bytes == produced
    assert kept + skipped == produced
    assert MAX_QUEUED_BYTES - 64 * 1024 <= kept <= MAX_QUEUED_BYTES


async def test_input_a_program_does_not_read_waits_and_fails_when_the_terminal_closes(
    guest: GuestClient,
) -> None:
    handle = await guest.open_terminal("stty raw -echo; echo ready; sleep 60")
    reader_events = handle.events()
    seen = b""
    with anyio.fail_after(30):
        while b"ready" not in seen:
            event = await anext(reader_events)
            assert isinstance(event, TermOutput)
            seen += event.data
    failure: list[BaseException] = []

    async def type_a_lot() -> None:
        try:
            await handle.write(b"x" * (4 * 1024 * 1024))
        except StdinClosed as err:
            failure.append(err)

    with anyio.fail_after(20):  # well before the 30 s an unread input may wait
        async with anyio.create_task_group() as group:
            group.start_soon(type_a_lot)
            # One round trip: the agent serves requests in order, so the write has begun (and
            # found the terminal's input full) by the time this is answered.
            await guest.call(methods.TERM_LIST)
            closed = await handle.close(grace_s=0.5)
    assert closed.closed
    assert failure, "the pending input failed when its terminal ended"
    assert "has ended" in str(failure[0])
