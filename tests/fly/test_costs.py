"""Cost tracking on the fly driver: a month's cost from the lifecycle, budgets that warn or stop.

Two hours of running cannot be waited for in a test: the project runs for real on the fake
Machines API, then its ``vm.status`` events are moved back in time in the store (the audit
trail the costs are computed from), as if the hours had passed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.core.costs import MONTH_SECONDS, month_bounds
from server.domain.config import FlyPrices, ServerConfig
from server.domain.models import VMStatus
from server.store import utcnow
from server.surfaces.mcp.server import ServerHandle, build_server
from tests.conformance.backends import BACKENDS
from tests.conftest import write_driver_options
from tests.helpers import call, call_error
from tests.lifecycle.test_sleep_and_wake import wait_for_status
from tests.servers import server_argv

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SMALL = {"cpus": 1, "memory_mb": 256, "max_storage_gb": 1}  # shared-cpu-1x, 256 MB, 1 GB volume


@pytest.fixture
async def fly_server(data_dir: Path) -> AsyncIterator[tuple[Client, ServerHandle]]:
    async with BACKENDS["fly"].environment({}, data_dir) as options:
        write_driver_options(data_dir, {"fly": options})
        config = ServerConfig.load(data_dir, driver="fly")
        handle = build_server(config, transport="memory", agent="alice")
        async with Client(handle.mcp) as client:
            yield client, handle


def backdate_running(db: Path, project_id: str, hours: float) -> tuple[datetime, datetime]:
    """Move the project's events so its last run began ``hours`` before its stop; return
    (start, stop) of that run."""
    with sqlite3.connect(db) as raw:
        rows = raw.execute(
            "SELECT event_id, kind, data, created_at FROM events WHERE project_id = ? "
            "ORDER BY event_id",
            (project_id,),
        ).fetchall()
        statuses = [(i, json.loads(d)["status"], at) for i, k, d, at in rows if k == "vm.status"]
        run_id = max(i for i, status, _ in statuses if status == VMStatus.RUNNING)
        stop_id, _, stop_at = next(
            (i, s, at) for i, s, at in statuses if i > run_id and s == VMStatus.STOPPED
        )
        stop = datetime.fromisoformat(stop_at)
        start = stop - timedelta(hours=hours)
        earlier = start - timedelta(seconds=1)
        for event_id, _, _, _ in rows:
            if event_id < run_id:
                raw.execute(
                    "UPDATE events SET created_at = MIN(created_at, ?) WHERE event_id = ?",
                    (earlier.isoformat(), event_id),
                )
        raw.execute(
            "UPDATE events SET created_at = ? WHERE event_id = ?", (start.isoformat(), run_id)
        )
        assert stop_id > run_id
    return start, stop


def expected_usd(start: datetime, stop: datetime, now: datetime) -> float:
    """What the default price table says for a shared-cpu-1x 256 MB run with a 1 GB volume,
    within this month."""
    prices = FlyPrices()
    first, _ = month_bounds(now)
    running = (stop - max(start, first)).total_seconds()
    stopped = (now - max(stop, first)).total_seconds()
    machine = prices.machine_per_month["shared-cpu-1x"] + prices.volume_per_gb_month
    idle = prices.rootfs_gb * prices.stopped_rootfs_per_gb_month + prices.volume_per_gb_month
    return (machine * running + idle * stopped) / MONTH_SECONDS


async def test_two_hours_of_a_small_machine_cost_what_the_price_table_says(
    fly_server: tuple[Client, ServerHandle], data_dir: Path
) -> None:
    client, _ = fly_server
    project_id = (await call(client, "create_project", name="metered", settings=SMALL))[
        "project_id"
    ]
    try:
        await call(client, "stop_project", project_id=project_id)
        start, stop = backdate_running(data_dir / "projectvm.db", project_id, hours=2)
        info = await call(client, "get_project", project_id=project_id)
        cost = info["cost"]
        assert cost["priced_as"] == "fly shared-cpu-1x 256 MB"
        assert cost["volume_gb"] == 1
        expected = expected_usd(start, stop, utcnow())
        assert round(cost["so_far_usd"], 2) == round(expected, 2)  # to the cent
        assert abs(cost["so_far_usd"] - expected) < 0.0001
        assert cost["running_seconds"] == pytest.approx(
            (stop - max(start, month_bounds(stop)[0])).total_seconds(), abs=1
        )
        # Stopped for the rest of the month: only the rootfs and the volume are billed.
        assert cost["projected_usd"] > cost["so_far_usd"]

        listed = await anyio.run_process(
            server_argv(data_dir, "costs", "--json"), env={**os.environ}, check=True
        )
        [row] = [r for r in json.loads(listed.stdout) if r["project_id"] == project_id]
        assert round(row["so_far_usd"], 2) == round(expected, 2)
        table = await anyio.run_process(
            server_argv(data_dir, "costs"), env={**os.environ}, check=True
        )
        assert project_id in table.stdout.decode()
    finally:
        await call(client, "delete_project", project_id=project_id)


async def test_a_spent_budget_with_action_stop_stops_the_vm_and_says_why(
    fly_server: tuple[Client, ServerHandle], data_dir: Path
) -> None:
    client, handle = fly_server
    assert handle.state is not None
    service = handle.state.service
    settings = {**SMALL, "monthly_budget_usd": 0.004, "budget_action": "stop"}
    project_id = (await call(client, "create_project", name="capped", settings=settings))[
        "project_id"
    ]
    try:
        await call(client, "stop_project", project_id=project_id)
        backdate_running(data_dir / "projectvm.db", project_id, hours=2)  # ~$0.0058 spent
        await call(client, "start_project", project_id=project_id)
        service.sleep_recheck.raise_()  # the next round checks budgets
        await wait_for_status(service, project_id, VMStatus.STOPPED)
        info = await call(client, "get_project", project_id=project_id)
        assert "budget" in info["status_reason"]
        kinds = [e.kind for e in await service.store.events.after(project_id, 0, 1000)]
        assert "budget.stopped" in kinds
        warnings = [
            e.data["percent"]
            for e in await service.store.events.after(project_id, 0, 1000)
            if e.kind == "budget.warning"
        ]
        assert warnings == [80, 100]
        # A call that needs the VM does not wake it while the budget is spent ...
        error = await call_error(client, "read_file", project_id=project_id, path="x")
        assert "monthly budget" in error
        assert "monthly_budget_usd" in error
        # ... until an admin raises the budget.
        await call(
            client,
            "update_project_settings",
            project_id=project_id,
            settings={"monthly_budget_usd": 100},
        )
        ran = await call(client, "run_command", project_id=project_id, command="echo back")
        assert ran["stdout"] == "back\n"
    finally:
        await call(client, "delete_project", project_id=project_id)
