"""The HTTP connection guard's rules, on a clock the test moves (the real server's behaviour is
measured in tests/security/test_connections.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from server.domain.config import Limits
from server.surfaces.http.connections import (
    ConnectionGuard,
    ConnectionLimits,
    Phase,
    TrackedConnection,
)
from server.surfaces.http.serve import connection_limits

LIMITS = ConnectionLimits(
    header_timeout_s=10,
    body_timeout_s=15,
    min_body_bytes_per_s=1000,
    keep_alive_timeout_s=15,
    max_connections=3,
)


class FakeTransport(asyncio.Transport):
    """Records how it was closed; never touches a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.how: str | None = None

    def is_closing(self) -> bool:
        return self.how is not None

    def close(self) -> None:
        self.how = "closed"

    def abort(self) -> None:
        self.how = "aborted"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock: Clock) -> ConnectionGuard:
    return ConnectionGuard(LIMITS, clock=clock)


def connect(guard: ConnectionGuard) -> tuple[TrackedConnection, FakeTransport]:
    connection = TrackedConnection(opened_at=guard.clock())
    transport = FakeTransport()
    guard.opened(connection, transport)
    return connection, transport


def test_a_connection_that_sends_no_complete_headers_is_aborted_at_the_header_deadline(
    guard: ConnectionGuard, clock: Clock
) -> None:
    _silent, silent_transport = connect(guard)
    dripping, dripping_transport = connect(guard)
    for _ in range(9):
        clock.now += 1
        guard.received(dripping, b"x")
        guard.sweep()
    assert silent_transport.how is None
    assert dripping_transport.how is None
    clock.now += 1
    guard.sweep()
    assert silent_transport.how == dripping_transport.how == "aborted"
    assert guard.open == set()


def test_the_end_of_the_headers_is_seen_even_split_across_reads(
    guard: ConnectionGuard, clock: Clock
) -> None:
    connection, _ = connect(guard)
    guard.received(connection, b"GET / HTTP/1.1\r\nHost: x\r\n\r")
    assert connection.phase is Phase.AWAITING
    guard.received(connection, b"\n")
    assert connection.phase is Phase.BODY


def test_a_body_gets_more_time_for_every_byte_that_arrives_at_the_minimum_rate(
    guard: ConnectionGuard, clock: Clock
) -> None:
    steady, steady_transport = connect(guard)
    trickle, trickle_transport = connect(guard)
    for connection in (steady, trickle):
        guard.headers_complete(connection, has_body=True)
    for _ in range(30):
        clock.now += 1
        guard.received(steady, b"x" * 1000)  # the minimum rate
        guard.received(trickle, b"x")
        guard.sweep()
    assert steady_transport.how is None
    assert trickle_transport.how == "aborted"
    guard.body_complete(steady)
    assert steady.phase is Phase.SERVING


def test_a_request_being_served_has_no_deadline_and_then_idles_until_the_keep_alive_one(
    guard: ConnectionGuard, clock: Clock
) -> None:
    connection, transport = connect(guard)
    guard.headers_complete(connection, has_body=False)
    clock.now += 3600
    guard.sweep()
    assert transport.how is None
    guard.response_complete(connection)
    clock.now += 14
    guard.sweep()
    assert transport.how is None
    guard.received(connection, b"GET /")  # the next request begins: the header deadline runs
    clock.now += 9
    guard.sweep()
    assert transport.how is None
    assert connection.phase is Phase.AWAITING
    guard.received(connection, b" HTTP/1.1\r\n\r\n")
    guard.headers_complete(connection, has_body=False)
    guard.response_complete(connection)
    clock.now += 15
    guard.sweep()
    assert transport.how == "closed"  # politely: it had nothing pending


def test_past_the_cap_the_longest_waiting_connection_makes_room(
    guard: ConnectionGuard, clock: Clock
) -> None:
    served, served_transport = connect(guard)
    guard.headers_complete(served, has_body=False)
    clock.now += 1
    idle, idle_transport = connect(guard)
    guard.headers_complete(idle, has_body=False)
    guard.response_complete(idle)
    clock.now += 1
    _waiting, waiting_transport = connect(guard)
    clock.now += 1
    _newcomer, newcomer_transport = connect(guard)
    assert waiting_transport.how == "aborted"  # waiting beats idle, however old the idle one
    assert idle_transport.how is None
    assert served_transport.how is None
    clock.now += 1
    another, _ = connect(guard)
    assert newcomer_transport.how == "aborted"
    clock.now += 1
    guard.headers_complete(another, has_body=False)
    _last, _ = connect(guard)
    assert idle_transport.how == "aborted"  # then the idle one
    assert served_transport.how is None
    assert len(guard.open) == LIMITS.max_connections
    assert guard.closed_surplus == 3


def test_when_every_connection_is_being_served_the_newcomer_is_refused(
    guard: ConnectionGuard,
) -> None:
    transports = []
    for _ in range(LIMITS.max_connections):
        connection, transport = connect(guard)
        guard.headers_complete(connection, has_body=False)
        transports.append(transport)
    _, newcomer = connect(guard)
    assert newcomer.how == "aborted"
    assert all(transport.how is None for transport in transports)


def test_a_connection_handed_to_another_protocol_or_closing_is_forgotten(
    guard: ConnectionGuard,
) -> None:
    connection, transport = connect(guard)
    guard.headers_complete(connection, has_body=False)
    transport.how = "closed by someone else"
    guard.sweep()
    assert guard.open == set()


def test_connections_get_at_most_half_the_open_file_limit_and_a_small_accept_batch() -> None:
    limits = Limits()
    assert connection_limits(limits, None).max_connections == limits.http_max_connections
    assert connection_limits(limits, 1_000_000).max_connections == limits.http_max_connections
    tight = connection_limits(limits, 256)
    assert tight.max_connections == 128
    assert tight.accept_batch * 4 < tight.max_connections
    assert connection_limits(limits, 1_000_000).accept_batch <= 64


def test_a_body_sent_fast_and_then_left_half_sent_is_aborted_a_body_timeout_later(
    guard: ConnectionGuard, clock: Clock
) -> None:
    """Measured since the start, a fast first part bought time for silence: 40 MB parked a
    request body (and the memory it took) for 41 minutes."""
    parked, transport = connect(guard)
    guard.headers_complete(parked, has_body=True)
    guard.received(parked, b"x" * 1_000_000)  # a thousand seconds' worth at the minimum rate
    for _ in range(14):
        clock.now += 1
        guard.sweep()
    assert transport.how is None
    clock.now += 1
    guard.sweep()
    assert transport.how == "aborted"


def test_the_time_the_app_works_with_what_it_read_does_not_count_against_the_body(
    guard: ConnectionGuard, clock: Clock
) -> None:
    """(An upload's app writes each piece to the VM before it reads on: the client waits.)"""
    uploading, transport = connect(guard)
    guard.headers_complete(uploading, has_body=True)
    guard.body_wanted(uploading, True)
    guard.received(uploading, b"x" * 15_000)
    guard.body_wanted(uploading, False)  # writing a piece, not reading
    clock.now += 60
    guard.sweep()
    assert transport.how is None
    guard.body_wanted(uploading, True)
    clock.now += 14
    guard.sweep()
    assert transport.how is None
    clock.now += 2
    guard.sweep()
    assert transport.how == "aborted"
