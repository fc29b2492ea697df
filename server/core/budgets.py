"""Monthly budgets of projects on a metered driver: a warning at 80%, and at 100% a warning
or a stop, as the project's ``budget_action`` says.

The sleeper's rounds check running projects that have a budget. A project stopped for its
budget is not woken by calls until an admin raises ``monthly_budget_usd`` (or sets
``budget_action`` to ``warn``) or the month ends; each warning is recorded once a month.
"""

from __future__ import annotations

import logging

from server.core.costs import CostMeter
from server.core.journal import Journal
from server.core.lifecycle import Lifecycle
from server.core.runtime import Runtimes
from server.domain.events import BudgetStopped, BudgetWarning, EventKind
from server.domain.models import Project, VMStatus
from server.store import Store
from vm_drivers.errors import DriverError

__all__ = ["WARN_AT", "Budgets"]

log = logging.getLogger("projectvm.budgets")

WARN_AT = 80  # percent


class Budgets:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        lifecycle: Lifecycle,
        runtimes: Runtimes,
        meter: CostMeter,
    ) -> None:
        self._store = store
        self._journal = journal
        self._lifecycle = lifecycle
        self._runtimes = runtimes
        self._meter = meter

    async def spent_percent(self, project: Project) -> tuple[float, float, str] | None:
        """(spent so far, percent of the budget, month) of a project with a budget."""
        budget = project.settings.monthly_budget_usd
        if budget is None:
            return None
        report = await self._meter.report(project.project_id)
        if report is None:
            return None
        return report.so_far_usd, 100 * report.so_far_usd / budget, report.month

    async def wake_refusal(self, project: Project) -> str | None:
        """Why a call may not wake this project (its budget is spent and action is stop)."""
        if project.settings.budget_action != "stop":
            return None
        spent = await self.spent_percent(project)
        if spent is None or spent[1] < 100:
            return None
        budget = project.settings.monthly_budget_usd
        return (
            f"project {project.project_id} has spent ${spent[0]:.2f} of its monthly budget of "
            f"${budget:.2f} this month ({spent[2]}) and stays stopped; an admin can raise "
            "monthly_budget_usd or set budget_action to 'warn' with update_project_settings"
        )

    async def check_all(self) -> None:
        """Warn about, or stop, running projects over their budgets."""
        for project in await self._store.projects.list():
            if project.vm_status != VMStatus.RUNNING or project.settings.monthly_budget_usd is None:
                continue
            try:
                await self._check(project)
            except (DriverError, ValueError) as err:
                log.warning("checking the budget of %s failed: %s", project.project_id, err)

    async def _check(self, project: Project) -> None:
        spent = await self.spent_percent(project)
        if spent is None:
            return
        so_far, percent, month = spent
        budget = project.settings.monthly_budget_usd
        assert budget is not None
        for threshold in (WARN_AT, 100):
            if percent >= threshold and not await self._warned(project, month, threshold):
                await self._journal.record(
                    project.project_id,
                    None,
                    BudgetWarning(
                        month=month,
                        spent_usd=round(so_far, 4),
                        budget_usd=budget,
                        percent=threshold,
                    ),
                )
        if percent >= 100 and project.settings.budget_action == "stop":
            await self._stop(project, so_far, budget, month)

    async def _warned(self, project: Project, month: str, threshold: int) -> bool:
        events = await self._store.events.after(project.project_id, 0, 1_000_000)
        return any(
            event.kind == EventKind.BUDGET_WARNING
            and event.data.get("month") == month
            and event.data.get("percent") == threshold
            for event in events
        )

    async def _stop(self, project: Project, spent: float, budget: float, month: str) -> None:
        runtime = self._runtimes.of(project.project_id)
        async with runtime.lifecycle:
            current = await self._store.projects.get(project.project_id)
            if current is None or current.vm_status != VMStatus.RUNNING:
                return
            reason = (
                f"stopped: its monthly budget of ${budget:.2f} is spent (${spent:.2f} in "
                f"{month}); an admin can raise monthly_budget_usd to start it again"
            )
            await self._lifecycle.halt(current, reason)
            async with self._journal.change() as change:
                await self._lifecycle.set_status(
                    current, None, VMStatus.STOPPED, reason, change=change
                )
                await change.record(
                    current.project_id,
                    None,
                    BudgetStopped(month=month, spent_usd=round(spent, 4), budget_usd=budget),
                )
        log.info("stopped %s for its budget", project.project_id)
