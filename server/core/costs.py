"""What a project on a metered driver costs: this month so far, and by the month's end.

Costs are accounted from the project's own lifecycle events (the audit trail): every
``vm.status`` event of a metered VM that starts running carries what it is billed as, so a
month is a timeline of running, stopped and gone intervals, priced with the configured table
(Fly's published prices by default). The projection assumes the project stays as it is now
until the month ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.core.results import CostReport
from server.domain.config import FlyPrices, Prices
from server.domain.events import EventKind
from server.domain.models import Event, VMStatus
from server.store import Store, utcnow
from vm_drivers.base import Billing

__all__ = ["CostMeter", "month_bounds", "parse_month"]

MONTH_SECONDS = 30 * 24 * 3600  # Fly prices are per 30 days, billed per second
GB_MB = 1024


def parse_month(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month {text!r} is not YYYY-MM (e.g. 2026-11)") from None


def month_bounds(start: datetime) -> tuple[datetime, datetime]:
    first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following


# What a VM status means for billing: running, stopped (rootfs and volume kept) or gone.
_STATES: dict[str, str] = {
    VMStatus.RUNNING: "running",
    VMStatus.STOPPED: "stopped",
    VMStatus.FAILED: "stopped",
    VMStatus.DESTROYING: "gone",
}


@dataclass
class _Interval:
    state: str  # "running", "stopped" or "gone"
    start: datetime
    end: datetime
    billing: Billing | None


class CostMeter:
    def __init__(self, store: Store, prices: Prices) -> None:
        self._store = store
        self._prices = prices.fly

    async def report(
        self, project_id: str, month: datetime | None = None, now: datetime | None = None
    ) -> CostReport | None:
        """The month's costs of a project that ran on a metered driver, else None."""
        now = now or utcnow()
        first, following = month_bounds(month or now)
        events = await self._store.events.after(project_id, 0, 1_000_000)
        intervals = _timeline(events, until=min(now, following))
        billing = next((i.billing for i in reversed(intervals) if i.billing), None)
        if billing is None:
            return None
        so_far = running = stopped = 0.0
        for interval in intervals:
            start, end = max(interval.start, first), min(interval.end, following)
            seconds = (end - start).total_seconds()
            if seconds <= 0 or interval.state == "gone" or interval.billing is None:
                continue
            so_far += self._cost(interval.state, interval.billing, seconds)
            if interval.state == "running":
                running += seconds
            else:
                stopped += seconds
        projected = so_far
        last = intervals[-1] if intervals else None
        if last is not None and last.state != "gone" and last.billing and now < following:
            remaining = (following - max(now, first)).total_seconds()
            projected += self._cost(last.state, last.billing, remaining)
        return CostReport(
            project_id=project_id,
            month=first.strftime("%Y-%m"),
            priced_as=f"{billing.plan} {billing.guest} {billing.memory_mb} MB",
            so_far_usd=round(so_far, 6),
            projected_usd=round(projected, 6),
            running_seconds=int(running),
            stopped_seconds=int(stopped),
            volume_gb=billing.volume_gb,
            prices_read_on=self._prices.read_on,
        )

    def _cost(self, state: str, billing: Billing, seconds: float) -> float:
        prices = self._prices
        volume = billing.volume_gb * prices.volume_per_gb_month
        if state == "running":
            machine = _machine_per_month(prices, billing)
        else:
            machine = prices.rootfs_gb * prices.stopped_rootfs_per_gb_month
        return (machine + volume) * seconds / MONTH_SECONDS


def _machine_per_month(prices: FlyPrices, billing: Billing) -> float:
    try:
        base = prices.machine_per_month[billing.guest]
    except KeyError:
        raise ValueError(
            f"no price for the guest size {billing.guest}; add it under "
            "[prices.fly.machine_per_month] in config.toml"
        ) from None
    per_cpu_mb = 256 if billing.guest.startswith("shared") else 2048
    extra_gb = max(0, billing.memory_mb - per_cpu_mb * billing.cpus) / GB_MB
    return base + extra_gb * prices.extra_memory_per_gb_month


def _timeline(events: list[Event], until: datetime) -> list[_Interval]:
    """Running, stopped and gone intervals from a project's events, up to ``until``."""
    intervals: list[_Interval] = []
    state, since = "gone", None
    billing: Billing | None = None  # the latest known: a stopped VM keeps its volume's size
    current: Billing | None = None  # the billing of the interval being built
    for event in events:
        if event.created_at > until:
            break
        if event.kind == EventKind.VM_STATUS:
            status = str(event.data.get("status"))
            if status == VMStatus.RUNNING and event.data.get("billing"):
                billing = Billing.model_validate(event.data["billing"])
            new = _STATES.get(status, state)
        elif event.kind == EventKind.PROJECT_DELETED:
            new = "gone"
        else:
            continue
        if new != state or since is None or (new == "running" and billing != current):
            if since is not None:
                intervals.append(_Interval(state, since, event.created_at, current))
            state, since, current = new, event.created_at, billing
    if since is not None:
        intervals.append(_Interval(state, since, until, current))
    return intervals
