"""Sleep with memory: a VM that sleeps keeps its processes, which carry on after the wake."""

from __future__ import annotations

import pytest
from mcp import Client

from server.domain.config import ServerConfig
from server.domain.models import VMStatus
from server.surfaces.mcp.server import build_server
from tests.helpers import call, eventually
from tests.lifecycle.test_sleep_and_wake import wait_for_status
from vm_drivers.base import DriverContext, SupportsSuspend
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio

TICKER = "nohup sh -c 'while :; do echo tick >> ticks; sleep 0.2; done' >/dev/null 2>&1 & echo $!"


async def suspends(config: ServerConfig) -> bool:
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        return isinstance(drivers.get(config.driver), SupportsSuspend)
    finally:
        await drivers.aclose()


async def test_a_process_started_before_sleep_runs_on_after_the_wake(
    driver_config: ServerConfig,
) -> None:
    if not await suspends(driver_config):
        pytest.skip(f"the {driver_config.driver} driver sleeps by stopping (no memory kept)")
    handle = build_server(driver_config, transport="memory", agent="alice")
    async with Client(handle.mcp) as client:
        assert handle.state is not None
        service = handle.state.service
        project_id = (
            await call(
                client, "create_project", name="dozes", settings={"auto_sleep_minutes": 0.05}
            )
        )["project_id"]
        try:
            started = await call(client, "run_command", project_id=project_id, command=TICKER)
            pid = started["stdout"].strip()
            assert pid.isdigit()
            await wait_for_status(service, project_id, VMStatus.STOPPED)
            events = await service.store.events.after(project_id, 0, 1000)
            # Once: a project does not doze off before anyone could use it.
            [slept] = [e for e in events if e.kind == "vm.slept"]
            assert slept.data["memory_kept"] is True
            info = await call(client, "get_project", project_id=project_id)
            assert "with its memory" in info["status_reason"]
            if driver_config.driver in ("qemu", "firecracker"):  # saved on this host
                assert info["usage"]["suspended_bytes"] > 0

            # Any call wakes it: the ticker is the same process, still ticking.
            first = await call(
                client,
                "run_command",
                project_id=project_id,
                command=f"kill -0 {pid} && wc -l < ticks",
            )
            assert first["exit_code"] == 0, first["stderr"]

            async def ticked_on() -> bool:
                later = await call(
                    client, "run_command", project_id=project_id, command="wc -l < ticks"
                )
                return int(later["stdout"]) > int(first["stdout"])

            await eventually(ticked_on, what="the ticker to tick after the wake")
            written = await call(
                client, "write_file", project_id=project_id, path="after.txt", content="woke"
            )
            read = await call(client, "read_file", project_id=project_id, path="after.txt")
            assert read["sha256"] == written["sha256"]
        finally:
            await call(client, "delete_project", project_id=project_id)
