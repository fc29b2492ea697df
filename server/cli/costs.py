"""``projectvm costs``: what each project on a metered driver costs this month (or another)."""

from __future__ import annotations

import argparse
import json

from server.cli.common import load_config, say
from server.core.costs import CostMeter, parse_month
from server.store import Store, utcnow

__all__ = ["costs"]


async def costs(args: argparse.Namespace) -> None:
    config = load_config(args)
    month = parse_month(args.month) if args.month else utcnow()
    async with await Store.open(config.db_path) as store:
        meter = CostMeter(store, config.prices)
        rows = []
        for project_id in await store.events.project_ids():
            report = await meter.report(project_id, month)
            if report is None:
                continue
            project = await store.projects.get(project_id)
            created = [e for e in await store.events.after(project_id, 0, 1) if e.data.get("name")]
            name = project.name if project else (created[0].data["name"] if created else "?")
            rows.append((report, name, project is None))
    if args.json:
        say(
            json.dumps(
                [
                    {**report.model_dump(), "name": name, "deleted": deleted}
                    for report, name, deleted in rows
                ],
                indent=2,
            )
        )
        return
    label = month.strftime("%Y-%m")
    if not rows:
        say(f"no project ran on a metered driver in {label}")
        return
    header = f"{'project':<22} {'name':<20} {'priced as':<28} {'hours':>7}"
    say(f"{header} {'so far':>9} {'month end':>9}")
    for report, name, deleted in rows:
        shown = f"{name[:18]}{' (deleted)' if deleted else ''}"[:20]
        say(
            f"{report.project_id:<22} {shown:<20} {report.priced_as or '-':<28} "
            f"{report.running_seconds / 3600:>7.2f} {report.so_far_usd:>9.2f} "
            f"{report.projected_usd:>9.2f}"
        )
    total = sum(report.so_far_usd for report, _, _ in rows)
    projected = sum(report.projected_usd for report, _, _ in rows)
    say(f"{'total':<72} {total:>9.2f} {projected:>9.2f}")
    say(f"USD, {label}; prices as read on {rows[0][0].prices_read_on} (config.toml [prices])")
