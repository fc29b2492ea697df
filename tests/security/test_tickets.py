"""WebSocket tickets: one agent's flood neither drops another agent's ticket nor slows issuing
(round three). On main, 10,000 unused tickets from one agent (any agent: ``POST
/api/v1/ws-tickets`` needs only a token) dropped every other agent's, and each new one cost
the event loop 2.3 ms of copying the whole book."""

from __future__ import annotations

import time

from server.surfaces.http.auth import Identity
from server.surfaces.http.ws.tickets import PER_AGENT, TicketBook

ALICE = Identity("alice", "bearer")
MALLORY = Identity("mallory", "bearer")

FLOOD = 20_000


def test_a_flood_of_one_agents_tickets_neither_drops_another_agents_nor_slows_issuing() -> None:
    book = TicketBook()
    alices = book.issue(ALICE, "prj_a")
    started = time.perf_counter()
    for _ in range(FLOOD):
        book.issue(MALLORY)
    elapsed = time.perf_counter() - started
    print(f"{FLOOD} tickets issued in {elapsed:.2f} s; {book.outstanding()} outstanding")
    assert elapsed < 1.0, f"issuing {FLOOD} tickets took {elapsed:.1f} s"
    assert book.outstanding("mallory") == PER_AGENT
    assert book.redeem(alices, "prj_a") == Identity("alice", "ticket")


def test_a_ticket_opens_once_only_its_project_and_not_after_it_expires() -> None:
    book = TicketBook(ttl_s=0)
    assert book.redeem(book.issue(ALICE), "prj_a") is None  # expired at once
    book = TicketBook()
    ticket = book.issue(ALICE, "prj_a")
    assert book.redeem(ticket, "prj_b") is None  # another project: refused, and used up
    assert book.redeem(ticket, "prj_a") is None
    ticket = book.issue(ALICE)
    assert book.redeem(ticket, "prj_b") == Identity("alice", "ticket")
    assert book.redeem(ticket, "prj_b") is None  # once
    assert book.outstanding() == 0
