from __future__ import annotations

from server.core.queue import ExecutionQueue, Ticket


def granted(queue: ExecutionQueue) -> list[str]:
    return sorted(queue.running)


def test_no_more_than_the_limit_run_at_once() -> None:
    queue = ExecutionQueue(limit=2)
    tickets = [Ticket(f"e{i}", "a") for i in range(5)]
    for ticket in tickets:
        queue.submit(ticket)
    assert granted(queue) == ["e0", "e1"]
    assert [t.granted.is_set() for t in tickets] == [True, True, False, False, False]
    queue.release(tickets[0])
    assert granted(queue) == ["e1", "e2"]


def test_waiting_executions_are_served_round_robin_across_agents() -> None:
    queue = ExecutionQueue(limit=1)
    first = Ticket("a0", "alice")
    queue.submit(first)
    burst = [Ticket(f"a{i}", "alice") for i in range(1, 5)]
    for ticket in burst:
        queue.submit(ticket)
    bob = Ticket("b0", "bob")
    carol = Ticket("c0", "carol")
    queue.submit(bob)
    queue.submit(carol)
    assert queue.positions() == {"a1": 1, "b0": 2, "c0": 3, "a2": 4, "a3": 5, "a4": 6}
    order = []
    current = first
    for _ in range(6):
        queue.release(current)
        [running] = queue.running.values()
        order.append(running.execution_id)
        current = running
    assert order == ["a1", "b0", "c0", "a2", "a3", "a4"]


def test_waiting_tickets_can_be_withdrawn() -> None:
    queue = ExecutionQueue(limit=1)
    running, waiting = Ticket("r", "a"), Ticket("w", "b")
    queue.submit(running)
    queue.submit(waiting)
    assert queue.withdraw(waiting)
    assert not queue.withdraw(waiting)
    assert not queue.withdraw(running)
    assert queue.positions() == {}
    queue.release(running)
    assert queue.running == {}


def test_raising_the_limit_starts_waiting_executions() -> None:
    queue = ExecutionQueue(limit=1)
    tickets = [Ticket(f"e{i}", "a") for i in range(3)]
    for ticket in tickets:
        queue.submit(ticket)
    queue.set_limit(3)
    assert granted(queue) == ["e0", "e1", "e2"]
    assert queue.waiting_count == 0
