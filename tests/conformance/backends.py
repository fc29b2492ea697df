"""What a driver needs around it to run the conformance suite on this machine.

Most drivers run with their default options against a real backend. A driver whose backend is
not reachable here but has a stand-in (a fake API, a fake CLI) maps to an async context manager
that starts the stand-in and yields the driver's options; it calls ``pytest.skip`` with the
reason when even the stand-in cannot run.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_fly import FakeFlyMachinesAPI, processes_under

BackendEnvironment = Callable[[Path], AbstractAsyncContextManager[dict[str, Any]]]


@asynccontextmanager
async def fake_fly_environment(root: Path) -> AsyncIterator[dict[str, Any]]:
    """The fly driver against FakeFlyMachinesAPI served on a local port, with its fake proxy."""
    if shutil.which("bwrap") is None:
        pytest.skip("the fake Fly Machines run in bubblewrap, which is not installed here")
    async with FakeFlyMachinesAPI(root / "fake-fly") as fake:
        yield fake.driver_options(await fake.serve_http())
        fake.assert_clean()
    assert processes_under(root / "fake-fly") == [], "the fake left Machine processes running"


ENVIRONMENTS: dict[str, BackendEnvironment] = {"fly": fake_fly_environment}


@asynccontextmanager
async def backend_options(name: str, root: Path) -> AsyncIterator[dict[str, Any]]:
    """The options the driver ``name`` runs the suite with (empty: its defaults)."""
    environment = ENVIRONMENTS.get(name)
    if environment is None:
        yield {}
        return
    async with environment(root) as options:
        yield options
