"""``ProjectService``: the facade every surface calls.

It assembles the core — store, journal and hub, policy and gate, runtimes, lifecycle, sleeper
and reconciliation — and the operations built on it, each given only what it needs. Every
operation is listed once in :attr:`ProjectService.endpoints` with its request and result
types (taken from the handler's signature) in :data:`ENDPOINTS`, and served by
:meth:`ProjectService.call`, so a surface can serve all of them uniformly and a test can
enumerate them.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from pydantic import BaseModel

from server import __version__
from server.core.access import Policy
from server.core.activity import Activity
from server.core.agents import Agents
from server.core.budgets import Budgets
from server.core.caller import Caller, ProgressReporter, Surface, no_progress
from server.core.channels import ChannelPool
from server.core.costs import CostMeter
from server.core.executions import Executions
from server.core.feed import Feed
from server.core.files import Files
from server.core.gate import Gate
from server.core.hub import EventHub
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.locks import Locks
from server.core.members import Members
from server.core.path_locks import PathLockTable
from server.core.projects import Projects
from server.core.reconcile import Reconciler
from server.core.requests import OPERATION_OF, REQUESTS, Request, WriteFile
from server.core.results import FileWrite
from server.core.runtime import Runtimes
from server.core.sleeper import Sleeper
from server.core.storage import StorageGuard
from server.core.terminals import Terminals
from server.core.wakeup import Wakeup
from server.domain.config import Limits, Prices, ServerConfig
from server.domain.operations import Operation
from server.store import Store
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

__all__ = ["ENDPOINTS", "Endpoint", "ProjectService", "open_service"]

log = logging.getLogger("projectvm")


@dataclass(frozen=True)
class Endpoint:
    """One operation as the surfaces see it: what it takes and what it gives."""

    operation: Operation
    request: type[Request]
    result: type[BaseModel]


Handler = Callable[[Any, Caller, Any], Awaitable[BaseModel]]

# Which operation module of the service serves each operation, and with which method.
_HANDLERS: dict[Operation, tuple[str, Handler]] = {
    Operation.CREATE_PROJECT: ("projects", Projects.create),
    Operation.LIST_PROJECTS: ("projects", Projects.list),
    Operation.GET_PROJECT: ("projects", Projects.get),
    Operation.START_PROJECT: ("projects", Projects.start),
    Operation.STOP_PROJECT: ("projects", Projects.stop),
    Operation.DELETE_PROJECT: ("projects", Projects.delete),
    Operation.UPDATE_PROJECT_SETTINGS: ("projects", Projects.update_settings),
    Operation.RUN_COMMAND: ("executions", Executions.run),
    Operation.READ_COMMAND_OUTPUT: ("executions", Executions.read_output),
    Operation.SEND_INPUT: ("executions", Executions.send_input),
    Operation.CANCEL_EXECUTION: ("executions", Executions.cancel),
    Operation.LIST_EXECUTIONS: ("executions", Executions.list_active),
    Operation.GET_EXECUTION_HISTORY: ("executions", Executions.history),
    Operation.READ_FILE: ("files", Files.read),
    Operation.WRITE_FILE: ("files", Files.write),
    Operation.EDIT_FILE: ("files", Files.edit),
    Operation.LIST_FILES: ("files", Files.list),
    Operation.SEARCH_FILES: ("files", Files.search),
    Operation.DELETE_PATH: ("files", Files.delete),
    Operation.MOVE_PATH: ("files", Files.move),
    Operation.WHOAMI: ("members", Members.whoami),
    Operation.LIST_MEMBERS: ("members", Members.list),
    Operation.ASSIGN_AGENT: ("members", Members.assign),
    Operation.REMOVE_AGENT: ("members", Members.remove),
    Operation.LOCK_PATH: ("locks", Locks.lock),
    Operation.UNLOCK_PATH: ("locks", Locks.unlock),
    Operation.LIST_LOCKS: ("locks", Locks.list),
    Operation.GET_EVENTS: ("feed", Feed.get_events),
    Operation.OPEN_TERMINAL: ("terminals", Terminals.open),
    Operation.TERMINAL_WRITE: ("terminals", Terminals.write),
    Operation.TERMINAL_READ: ("terminals", Terminals.read),
    Operation.RESIZE_TERMINAL: ("terminals", Terminals.resize),
    Operation.CLOSE_TERMINAL: ("terminals", Terminals.close),
    Operation.LIST_TERMINALS: ("terminals", Terminals.list),
}


def _endpoint(operation: Operation, handler: Handler) -> Endpoint:
    hints = typing.get_type_hints(handler)
    request = hints["request"]
    if request is not REQUESTS[operation]:
        raise AssertionError(f"{operation} is served with {request}, not {REQUESTS[operation]}")
    return Endpoint(operation, request, hints["return"])


ENDPOINTS: dict[Operation, Endpoint] = {
    operation: _endpoint(operation, handler) for operation, (_, handler) in _HANDLERS.items()
}


class ProjectService:
    """Use as ``async with ProjectService(...) as service``; it owns the guest channels and
    the background work (running commands, the sleeper, event publishing)."""

    def __init__(
        self,
        store: Store,
        drivers: DriverSet,
        default_driver: str,
        limits: Limits | None = None,
        prices: Prices | None = None,
    ) -> None:
        self.store = store
        self.drivers = drivers
        self.limits = limits or Limits()
        self._task_group = anyio.create_task_group()
        self.hub = EventHub()
        self.journal = Journal(store, self.hub)
        self.runtimes = Runtimes()
        self.activity = Activity(store, self.runtimes)
        self.policy = Policy(store, self.limits)
        self.gate = Gate(self.policy, self.activity)
        self.agents = Agents(store)
        self.channels = ChannelPool(self._task_group)
        self.storage = StorageGuard()
        self.sleep_recheck = Wakeup()
        self.lifecycle = Lifecycle(
            store,
            self.journal,
            drivers,
            self.channels,
            self.runtimes,
            self.activity,
            on_running=self.sleep_recheck.raise_,
        )
        self.costs = CostMeter(store, prices or Prices())
        self.budgets = Budgets(store, self.journal, self.lifecycle, self.runtimes, self.costs)
        self.lifecycle.wake_refusal = self.budgets.wake_refusal
        self.sleeper = Sleeper(
            store, self.journal, self.lifecycle, self.runtimes, self.sleep_recheck, self.budgets
        )
        path_locks = PathLockTable(store)
        self.projects = Projects(
            store,
            self.journal,
            self.gate,
            self.lifecycle,
            self.sleep_recheck,
            self.runtimes,
            self.storage,
            self.costs,
            default_driver,
        )
        self.members = Members(store, self.journal, self.gate)
        self.executions = Executions(
            store,
            self.journal,
            self.gate,
            self.lifecycle,
            self.runtimes,
            self.storage,
            self.limits,
            self._task_group,
        )
        self.terminals = Terminals(
            store,
            self.journal,
            self.gate,
            self.lifecycle,
            self.runtimes,
            self.storage,
            self.limits,
            self._task_group,
        )
        self.files = Files(
            store,
            self.journal,
            self.gate,
            self.lifecycle,
            self.runtimes,
            self.storage,
            path_locks,
            self.limits,
        )
        self.locks = Locks(self.journal, self.gate, self.lifecycle, self.runtimes, path_locks)
        self.feed = Feed(store, self.gate, self.hub)

    @property
    def default_driver(self) -> str:
        return self.projects.default_driver

    async def call(self, caller: Caller, request: Request) -> BaseModel:
        """Serve ``caller.operation`` with ``request`` (its request model)."""
        owner, handler = _HANDLERS[caller.operation]
        expected = ENDPOINTS[caller.operation].request
        if not isinstance(request, expected):
            raise TypeError(f"{caller.operation} takes {expected.__name__}, not {request!r}")
        return await handler(getattr(self, owner), caller, request)

    async def upload(
        self, caller: Caller, request: WriteFile, chunks: AsyncIterable[bytes]
    ) -> FileWrite:
        """Serve a ``write_file`` whose content arrives as a stream (an HTTP upload); the same
        operation, so the same policy, with the content never held whole."""
        if caller.operation != Operation.WRITE_FILE:
            raise TypeError(f"an upload is the write_file operation, not {caller.operation}")
        return await self.files.write_stream(caller, request, chunks)

    async def act(
        self,
        agent_id: str,
        request: Request,
        *,
        surface: Surface = "cli",
        progress: ProgressReporter = no_progress,
    ) -> Any:
        """Serve ``request`` (its operation is the request's type) as ``agent_id``."""
        caller = Caller(agent_id, surface, OPERATION_OF[type(request)], progress)
        return await self.call(caller, request)

    async def __aenter__(self) -> Self:
        await self._task_group.__aenter__()
        try:
            self._task_group.start_soon(self.hub.run_publishers)
            await Reconciler(self.store, self.lifecycle).run()
            self._task_group.start_soon(self.sleeper.run)
        except BaseException as err:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(type(err), err, err.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.channels.aclose()
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)


@asynccontextmanager
async def open_service(config: ServerConfig) -> AsyncIterator[ProjectService]:
    """Open the store and drivers of ``config`` and run a ``ProjectService`` over them."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.db_path)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        default_driver = await drivers.choose(config.driver)
        log.info(
            "ProjectVM %s: data in %s, driver %s", __version__, config.data_dir, default_driver
        )
        async with ProjectService(
            store, drivers, default_driver, config.limits, config.prices
        ) as service:
            yield service
    finally:
        await drivers.aclose()
        await store.aclose()
