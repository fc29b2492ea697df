"""``projectvm agents``, ``projectvm projects`` and ``projectvm gc``."""

from __future__ import annotations

import argparse
import json

from server.cli.common import load_config, say, store_of
from server.core.agents import Agents
from server.core.gc import GcReport, collect_garbage
from server.store import Store
from server.surfaces.mcp.server import default_user
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet

__all__ = ["agents", "gc", "projects"]


async def agents(args: argparse.Namespace) -> None:
    async with store_of(args) as store:
        registry = Agents(store)
        if args.agents_command in ("add", "token"):
            token = await registry.issue_token(
                args.name, replace=args.agents_command == "token", user=default_user()
            )
            if args.quiet:
                say(token)
                return
            say(f"agent {args.name}: token (shown once, keep it safe):")
            say(token)
        elif args.agents_command == "list":
            for agent in await store.agents.list():
                seen = agent.last_seen_at.isoformat() if agent.last_seen_at else "never"
                token = "token" if agent.has_token else "no token (stdio only)"
                created = f"{agent.created_at:%Y-%m-%d}"
                say(f"{agent.agent_id:<24} {token:<22} created {created}  seen {seen}")
        elif args.agents_command == "remove":
            await registry.remove(args.name)
            say(f"removed agent {args.name}; its token no longer works")


async def projects(args: argparse.Namespace) -> None:
    async with store_of(args) as store:
        found = await store.projects.list()
        if args.json:
            say(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
            return
        if not found:
            say("no projects")
        for p in found:
            say(f"{p.project_id}  {p.vm_status:<10} {p.driver:<8} owner={p.owner_id:<16} {p.name}")


async def gc(args: argparse.Namespace) -> None:
    config = load_config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        async with await Store.open(config.db_path) as store:
            report = await collect_garbage(
                store,
                drivers,
                remove=args.yes,
                all_installations=args.all_installations,
                instance=args.instance,
            )
    finally:
        await drivers.aclose()
    if args.json:
        say(report.model_dump_json(indent=2))
        return
    _print_report(report, args)


def _print_report(report: GcReport, args: argparse.Namespace) -> None:
    for name, reason in report.skipped_drivers.items():
        say(f"skipped {name}: {reason}")
    if report.installations is not None:
        say(f"installations with ProjectVM resources (this one: {report.instance_id}):")
        for group in report.installations:
            mark = " (this one)" if group.this_one else ""
            span = ""
            if group.oldest is not None and group.newest is not None:
                span = f", made {group.oldest:%Y-%m-%d %H:%M} .. {group.newest:%Y-%m-%d %H:%M}"
            say(f"  {group.instance_id}{mark}: {len(group.vms)} VM(s){span}")
            for vm in group.vms:
                made = f"{vm.created_at:%Y-%m-%d %H:%M}" if vm.created_at else "?"
                say(f"      {vm.driver:<7} {vm.vm_id}  made {made}  {vm.detail}")
    target = f"of installation {args.instance}" if args.instance else "of no project"
    if not report.strays:
        say(f"nothing to collect: no VM {target}")
    for vm in report.strays:
        state = "removed" if vm.vm_id in report.removed else "stray"
        say(f"{state:<8} {vm.driver:<7} {vm.vm_id}  project={vm.project_id}  {vm.detail}")
    if report.strays and not args.yes:
        again = f" --instance {args.instance}" if args.instance else ""
        say(f"{len(report.strays)} VM(s) {target}; run `projectvm gc{again} --yes` to remove them")
    others = {vm.labels.get("projectvm.instance") for vm in report.foreign}
    if report.foreign and args.instance is None:
        say(
            f"left alone: {len(report.foreign)} VM(s) of {len(others)} other installation(s); "
            "`projectvm gc --all-installations` lists them, `--instance ID --yes` removes one's"
        )
