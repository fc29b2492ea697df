"""``projectvm doctor``: which drivers work here, why not, and what would be chosen."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from typing import Any

import anyio

from guest_runtime.client import GuestClient
from guest_runtime.errors import ProjectVMError
from server import __version__
from server.cli.common import load_config, say
from vm_drivers.base import DriverContext, VMSpec
from vm_drivers.registry import DriverSet, available_driver_names, platform_preference

__all__ = ["doctor"]

MEASURE_TIMEOUT_S = 300


async def _measure(drivers: DriverSet, name: str) -> str:
    """Create a VM, run a command in it, destroy it; how long each took (or why it failed)."""
    driver = drivers.get(name)
    spec = VMSpec(project_id=f"prj_doctor{secrets.token_hex(4)}", name="doctor measurement")
    began = time.monotonic()
    vm_id = None
    try:
        with anyio.fail_after(MEASURE_TIMEOUT_S):
            created = await driver.create_project_vm(spec)
            vm_id = created.vm_id
            ready = time.monotonic()
            async with GuestClient(await driver.open_channel(vm_id)) as client:
                await client.hello()
                handle = await client.start_exec("true")
                async for _ in handle.events():
                    pass
            first = time.monotonic()
    except (ProjectVMError, TimeoutError) as err:
        return f"failed after {time.monotonic() - began:.1f}s: {err or 'timed out'}"
    finally:
        if vm_id is not None:
            with anyio.CancelScope(shield=True):
                await driver.destroy_project_vm(vm_id)
    return f"create (boot) {ready - began:.2f}s, then first command {first - ready:.2f}s"


async def doctor(args: argparse.Namespace) -> None:
    config = load_config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    report: dict[str, Any] = {"version": __version__, "data_dir": str(config.data_dir)}
    try:
        rows = []
        for name in available_driver_names():
            availability = await drivers.probe(name)
            row = availability.model_dump()
            if args.measure and availability.usable:
                row["measured"] = await _measure(drivers, name)
            rows.append(row)
        report["drivers"] = rows
        report["preference"] = platform_preference(environment=os.environ.get("VM_SERVICE"))
        try:
            report["selected"] = await drivers.choose(config.driver)
        except ProjectVMError as err:
            report["selected"] = None
            report["selection_error"] = str(err)
    finally:
        await drivers.aclose()
    if args.json:
        say(json.dumps(report, indent=2))
        return
    say(f"ProjectVM {__version__}   data directory: {config.data_dir}")
    for row in report["drivers"]:
        mark = "ok " if row["usable"] else "-- "
        only = " [only when asked for by name]" if row["usable"] and not row["automatic"] else ""
        say(f"  {mark}{row['driver']:<12} {row['reason']}{only}")
        for key, value in row["details"].items():
            say(f"       {key}: {value}")
        if "measured" in row:
            say(f"       measured: {row['measured']}")
    say(f"automatic choice order here: {', '.join(report['preference'])}")
    if report["selected"]:
        say(f"new projects will use: {report['selected']}")
    else:
        say(f"no driver can be used: {report.get('selection_error')}")
