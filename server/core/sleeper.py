"""Idle projects go to sleep: a running VM unused for its ``auto_sleep_minutes`` is stopped.

Activity is what :mod:`server.core.activity` notes, plus any command still running. The sleeper
looks again when the next project could be due, or at once when a project starts running or a
setting changes.
"""

from __future__ import annotations

import logging
import time

import anyio

from server.core.budgets import Budgets
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.runtime import Runtime, Runtimes
from server.core.wakeup import Wakeup
from server.domain.errors import ProjectNotRunning
from server.domain.events import VMSlept
from server.domain.models import Project, VMStatus
from server.store import Store, utcnow
from vm_drivers.errors import DriverError

__all__ = ["Sleeper"]

log = logging.getLogger("projectvm.sleeper")

CHECK_MAX_S = 30.0
# However small auto_sleep_minutes is, the sleeper looks at most this often.
CHECK_MIN_S = 0.25


class Sleeper:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        lifecycle: Lifecycle,
        runtimes: Runtimes,
        recheck: Wakeup,
        budgets: Budgets,
    ) -> None:
        self._store = store
        self._journal = journal
        self._lifecycle = lifecycle
        self._runtimes = runtimes
        self._budgets = budgets
        # Raised when settings change or a project starts: recompute when the next is due.
        self._recheck = recheck
        # When the last complete round began (monotonic), and an event for the next end.
        self.last_round_started = float("-inf")
        self._round_done = anyio.Event()

    async def run(self) -> None:
        """Put idle projects to sleep, until cancelled."""
        while True:
            began = time.monotonic()
            try:
                wait = await self._sleep_idle_projects()
            except Exception:  # never let a bad round end the sleeper (or the service)
                log.exception("checking for idle projects failed; trying again later")
                wait = CHECK_MAX_S
            self.last_round_started = began
            done, self._round_done = self._round_done, anyio.Event()
            done.set()
            await self._recheck.wait(wait)

    async def wait_for_round(self, started_after: float) -> None:
        """Return once a round that began at or after ``started_after`` (monotonic) is done:
        everything due by then has been looked at."""
        while self.last_round_started < started_after:
            await self._round_done.wait()

    @staticmethod
    def _last_activity(project: Project, runtime: Runtime, now: float) -> float:
        """The latest activity seen by this process or, through the store, by any other."""
        if project.last_activity_at is None:
            return runtime.last_activity
        ago = (utcnow() - project.last_activity_at).total_seconds()
        return max(runtime.last_activity, now - ago)

    async def _sleep_idle_projects(self) -> float:
        """Put idle projects to sleep; return how long until the next one could be due."""
        await self._budgets.check_all()
        now = time.monotonic()
        next_due = CHECK_MAX_S
        for project in await self._store.projects.list():
            minutes = project.settings.auto_sleep_minutes
            if project.vm_status != VMStatus.RUNNING or minutes <= 0:
                continue
            runtime = self._runtimes.of(project.project_id)
            if runtime.live:
                runtime.last_activity = now  # a running command is activity
            idle_for = now - self._last_activity(project, runtime, now)
            due_in = minutes * 60 - idle_for
            if due_in > 0:
                next_due = min(next_due, due_in)
                continue
            try:
                await self._sleep(project, minutes)
            except (DriverError, ProjectNotRunning) as err:
                log.warning("putting %s to sleep failed: %s", project.project_id, err)
        return max(next_due, CHECK_MIN_S)

    async def _sleep(self, project: Project, minutes: float) -> None:
        runtime = self._runtimes.of(project.project_id)
        async with runtime.lifecycle:
            current = await self._store.projects.get(project.project_id)
            now = time.monotonic()
            idle_for = now - (self._last_activity(current, runtime, now) if current else now)
            if (
                current is None
                or current.vm_status != VMStatus.RUNNING
                or runtime.live
                or idle_for < minutes * 60
            ):
                return
            kept = await self._lifecycle.halt(
                current, "the project went to sleep", keep_memory=True
            )
            memory = " with its memory (processes resume where they were)" if kept else ""
            async with self._journal.change() as change:
                await self._lifecycle.set_status(
                    current,
                    None,
                    VMStatus.STOPPED,
                    f"asleep{memory} after {minutes:g} min without activity; any call wakes it",
                    change=change,
                )
                await change.record(
                    current.project_id,
                    None,
                    VMSlept(idle_s=round(idle_for, 1), memory_kept=kept),
                )
