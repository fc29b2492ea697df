"""VM creation and start failures are retried with backoff, then recorded with the cause."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.core.requests import (
    CreateProject,
    DeleteProject,
    ReadFile,
    RunCommand,
    StartProject,
)
from server.core.service import ProjectService
from server.domain.errors import ProjectNotRunning
from server.domain.models import VMStatus
from server.store import Store
from vm_drivers.base import DriverContext, VMCreationResult, VMDriver, VMSpec
from vm_drivers.errors import DriverError, VMCreationFailed
from vm_drivers.registry import DriverSet

pytestmark = pytest.mark.anyio


class FlakyDriverFake:
    """A fake for what cannot be provoked on demand here: a backend that fails N times.

    Everything else is delegated to the real local driver.
    """

    name = "flaky"

    def __init__(self, real: VMDriver, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.attempts = 0

    async def create_project_vm(self, spec: VMSpec) -> VMCreationResult:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise VMCreationFailed(f"simulated backend hiccup #{self.attempts}")
        return await self.real.create_project_vm(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
async def service_with(data_dir: Path, requires_bwrap: None) -> AsyncIterator[Any]:
    made: list[tuple[ProjectService, DriverSet, Store]] = []

    async def build(failures: int) -> tuple[ProjectService, FlakyDriverFake]:
        drivers = DriverSet(DriverContext.for_data_dir(data_dir))
        flaky = FlakyDriverFake(drivers.get("local"), failures)
        drivers.register("flaky", flaky)  # type: ignore[arg-type]
        store = await Store.open(data_dir / "projectvm.db")
        service = ProjectService(store, drivers, "flaky")
        await service.__aenter__()
        made.append((service, drivers, store))
        return service, flaky

    yield build
    for service, drivers, store in made:
        await service.__aexit__(None, None, None)
        await drivers.aclose()
        await store.aclose()


async def test_transient_creation_failures_are_retried(service_with: Any) -> None:
    service, flaky = await service_with(failures=2)
    project = await service.act("alice", CreateProject(name="flaky but fine"))
    assert flaky.attempts == 3
    assert project.status == VMStatus.RUNNING
    result = await service.act(
        "alice", RunCommand(project_id=project.project_id, command="echo ok")
    )
    assert result.stdout == "ok\n"


async def test_persistent_failures_mark_the_project_failed_with_the_cause(
    service_with: Any,
) -> None:
    service, flaky = await service_with(failures=10)
    with pytest.raises(DriverError, match="simulated backend hiccup #3"):
        await service.act("alice", CreateProject(name="doomed"))
    assert flaky.attempts == 3
    [project] = await service.store.projects.list()
    assert project.vm_status == VMStatus.FAILED
    assert "simulated backend hiccup #3" in (project.vm_status_reason or "")
    with pytest.raises(ProjectNotRunning, match="start_project"):
        await service.act("alice", ReadFile(project_id=project.project_id, path="x"))
    flaky.failures = 0
    await service.act("alice", StartProject(project_id=project.project_id))
    ran = await service.act("alice", RunCommand(project_id=project.project_id, command="true"))
    assert ran.exit_code == 0
    deleted = await service.act("alice", DeleteProject(project_id=project.project_id))
    assert deleted.deleted
