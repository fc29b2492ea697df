"""``projectvm doctor``: which drivers work here, why not, and what would be chosen."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from guest_runtime.errors import ProjectVMError
from server import __version__
from server.cli.common import load_config, say
from vm_drivers.base import DriverContext
from vm_drivers.registry import DriverSet, available_driver_names, platform_preference

__all__ = ["doctor"]


async def doctor(args: argparse.Namespace) -> None:
    config = load_config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    report: dict[str, Any] = {"version": __version__, "data_dir": str(config.data_dir)}
    try:
        rows = []
        for name in available_driver_names():
            availability = await drivers.probe(name)
            rows.append(availability.model_dump())
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
        say(f"  {mark}{row['driver']:<12} {row['reason']}")
        for key, value in row["details"].items():
            say(f"       {key}: {value}")
    say(f"automatic choice order here: {', '.join(report['preference'])}")
    if report["selected"]:
        say(f"new projects will use: {report['selected']}")
    else:
        say(f"no driver can be used: {report.get('selection_error')}")
