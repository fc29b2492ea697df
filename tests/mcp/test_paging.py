"""The audit log and the event feed can be read to the end, page by page, while they grow."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from server.core.liveness import this_server_id
from server.domain.models import Execution, ExecutionStatus
from server.store import Store, utcnow
from server.surfaces.mcp.server import ServerHandle
from tests.helpers import call

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Alice = tuple[Client, ServerHandle]
EXECUTIONS = 2500


async def seed(store: Store, project_id: str, count: int) -> set[str]:
    """``count`` finished executions, recorded as the service records them (one transaction:
    the paging is under test here, not running commands)."""
    ids = set()
    async with store.transaction():
        for number in range(count):
            now = utcnow()
            execution = Execution(
                execution_id=f"exe_seed{number:05d}",
                project_id=project_id,
                agent_id="alice",
                command=f"echo {number}",
                status=ExecutionStatus.COMPLETED,
                exit_code=0,
                queued_at=now,
                started_at=now,
                completed_at=now,
            )
            await store.executions.insert(execution, this_server_id())
            await store.executions.finish(execution)
            ids.add(execution.execution_id)
    return ids


async def test_history_pages_return_every_execution_once_in_order_while_more_arrive(
    alice: Alice,
) -> None:
    client, handle = alice
    project_id = (
        await call(
            client,
            "create_project",
            name="long log",
            settings={"max_concurrent_executions": 8},
        )
    )["project_id"]
    assert handle.state is not None
    before = await seed(handle.state.service.store, project_id, EXECUTIONS)

    adding = anyio.Event()
    added: list[str] = []

    async def keep_adding() -> None:
        while not adding.is_set():
            ran = await call(client, "run_command", project_id=project_id, command="true")
            added.append(ran["execution_id"])

    newest_first: list[dict[str, object]] = []
    oldest_first: list[dict[str, object]] = []
    async with anyio.create_task_group() as group:
        group.start_soon(keep_adding)
        cursor = None
        while True:
            page = await call(
                client, "get_execution_history", project_id=project_id, limit=97, cursor=cursor
            )
            newest_first.extend(page["executions"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        cursor = None
        while True:
            page = await call(
                client,
                "get_execution_history",
                project_id=project_id,
                limit=131,
                cursor=cursor,
                order="oldest_first",
            )
            oldest_first.extend(page["executions"])
            cursor = page["next_cursor"]
            if not page["has_more"] and len(oldest_first) >= EXECUTIONS:
                break
        adding.set()
    assert added, "the writer never ran alongside the reader"
    for pages, descending in ((newest_first, True), (oldest_first, False)):
        ids = [str(e["execution_id"]) for e in pages]
        assert len(ids) == len(set(ids)), "an execution appeared twice"
        assert before <= set(ids), "an execution was skipped"
        positions = [int(str(e["seq"])) for e in pages]
        assert positions == sorted(positions, reverse=descending)


async def test_event_pages_return_every_event_once_in_order_while_more_arrive(
    alice: Alice,
) -> None:
    client, handle = alice
    project_id = (await call(client, "create_project", name="busy feed"))["project_id"]
    for number in range(300):
        await call(client, "write_file", project_id=project_id, path=f"f{number}", content="x")
    stop = anyio.Event()

    async def keep_writing() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            await call(
                client, "write_file", project_id=project_id, path=f"late{number}", content="y"
            )

    seen: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(keep_writing)
        since = 0
        while True:
            page = await call(client, "get_events", project_id=project_id, since_id=since, limit=37)
            seen.extend(e["event_id"] for e in page["events"])
            since = page["last_event_id"]
            if not page["has_more"] and len(seen) > 400:
                break
        stop.set()
    assert seen == sorted(set(seen)), "events must come once each, in order"
    assert handle.state is not None
    stored = await handle.state.service.store.events.after(project_id, 0, 100_000)
    assert [e.event_id for e in stored if e.event_id <= seen[-1]] == seen


async def test_a_history_page_with_outputs_stops_at_its_byte_budget(alice: Alice) -> None:
    client, handle = alice
    project_id = (await call(client, "create_project", name="big outputs"))["project_id"]
    assert handle.state is not None
    store = handle.state.service.store
    megabyte = "o" * (1024 * 1024)
    async with store.transaction():
        for number in range(20):
            now = utcnow()
            execution = Execution(
                execution_id=f"exe_big{number:03d}",
                project_id=project_id,
                agent_id="alice",
                command=f"print {number}",
                status=ExecutionStatus.COMPLETED,
                exit_code=0,
                output=megabyte,
                queued_at=now,
                started_at=now,
                completed_at=now,
            )
            await store.executions.insert(execution, this_server_id())
            await store.executions.finish(execution)
    bare = await call(client, "get_execution_history", project_id=project_id, limit=50)
    assert len(bare["executions"]) == 20
    assert bare["has_more"] is False
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await call(
            client,
            "get_execution_history",
            project_id=project_id,
            limit=50,
            include_output=True,
            cursor=cursor,
        )
        pages += 1
        outputs = sum(len(e["output"]) for e in page["executions"])
        assert outputs <= handle.config.limits.max_history_page_bytes
        seen.extend(e["execution_id"] for e in page["executions"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [f"exe_big{n:03d}" for n in reversed(range(20))]
    assert pages == 3  # 8 MiB per page: 8 + 8 + 4
