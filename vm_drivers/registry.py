"""Driver lookup by name, lazy construction, and the platform's automatic choice.

Automatic choice follows the seed's ``UnifiedVMService``: ``VM_SERVICE=production`` means fly;
on Linux firecracker if it boots guests here, else qemu if KVM works, else docker if an engine
answers, else local (qemu under emulation and the unisolated process driver are used only when
asked for by name); on macOS lima if installed, else docker; elsewhere docker.
"""

from __future__ import annotations

import importlib
import os
import platform
import typing
from typing import Any

from pydantic import ValidationError

from vm_drivers.base import Availability, DriverContext, VMDriver
from vm_drivers.config import DriverConfig, parse_driver_config
from vm_drivers.errors import DriverConfigError, DriverUnavailable

__all__ = [
    "DRIVER_CLASSES",
    "DriverSet",
    "available_driver_names",
    "build_driver",
    "platform_preference",
]


# Where each driver lives; imported on first use only.
DRIVER_CLASSES: dict[str, str] = {
    "local": "vm_drivers.local:LocalDriver",
    "docker": "vm_drivers.docker:DockerDriver",
    "process": "vm_drivers.process:ProcessDriver",
    "qemu": "vm_drivers.qemu:QemuDriver",
    "firecracker": "vm_drivers.firecracker.driver:FirecrackerDriver",
    "lima": "vm_drivers.lima:LimaDriver",
    "fly": "vm_drivers.fly:FlyDriver",
}


def build_driver(config: DriverConfig, context: DriverContext) -> VMDriver:
    """The driver ``config`` is for, imported now if it was not yet."""
    module_name, _, class_name = DRIVER_CLASSES[config.type].partition(":")
    driver_class = getattr(importlib.import_module(module_name), class_name)
    driver: VMDriver = driver_class(config, context)
    return driver


def available_driver_names() -> list[str]:
    """Names of the drivers this build has a config (and so an implementation) for."""
    union = typing.get_args(DriverConfig)[0]
    members = typing.get_args(union) or (union,)
    return [member.model_fields["type"].default for member in members]


def platform_preference(system: str | None = None, environment: str | None = None) -> list[str]:
    """Drivers to try, best first, for this platform and ``VM_SERVICE`` value."""
    if environment == "production":
        return ["fly"]
    if environment:
        return [environment]
    system = system or platform.system()
    if system == "Linux":
        return ["firecracker", "qemu", "docker", "local"]
    if system == "Darwin":
        return ["lima", "docker"]
    return ["docker"]


class DriverSet:
    """The drivers of one server, built on first use from their configs."""

    def __init__(self, context: DriverContext, options: dict[str, dict[str, Any]] | None = None):
        self.context = context
        self._options = options or {}
        self._drivers: dict[str, VMDriver] = {}

    def register(self, name: str, driver: VMDriver) -> None:
        """Use an already built driver under ``name`` (embedding, or a fake in tests)."""
        self._drivers[name] = driver

    def config(self, name: str) -> DriverConfig:
        if name not in available_driver_names() and name not in self._drivers:
            raise DriverConfigError(
                f"unknown driver {name!r}; choose one of {', '.join(available_driver_names())}"
            )
        try:
            return parse_driver_config({**self._options.get(name, {}), "type": name})
        except ValidationError as err:
            raise DriverConfigError(f"invalid options for the {name} driver: {err}") from err

    def get(self, name: str) -> VMDriver:
        driver = self._drivers.get(name)
        if driver is None:
            driver = build_driver(self.config(name), self.context)
            self._drivers[name] = driver
        return driver

    async def probe(self, name: str) -> Availability:
        if name not in available_driver_names() and name not in self._drivers:
            return Availability(
                driver=name, usable=False, reason="not available in this build of ProjectVM"
            )
        try:
            return await self.get(name).probe()
        except (DriverUnavailable, DriverConfigError) as err:
            return Availability(driver=name, usable=False, reason=str(err))

    async def choose(self, requested: str = "auto", environment: str | None = None) -> str:
        """The driver for new projects: ``requested`` itself (``--driver`` or config), else
        what ``VM_SERVICE`` names, else the platform's best usable one. A driver asked for by
        name must be usable here, or this fails saying which was asked for, where, and why."""
        if environment is None:
            environment = os.environ.get("VM_SERVICE") or None
        if requested != "auto":
            return await self._usable(requested, f"--driver {requested}")
        if environment == "production":
            self._check_production()
        if environment:
            preference = platform_preference(environment=environment)
            if len(preference) == 1:
                return await self._usable(preference[0], f"VM_SERVICE={environment}")
        reasons = []
        for name in platform_preference():
            availability = await self.probe(name)
            if availability.usable and availability.automatic:
                return name
            reasons.append(f"{name}: {availability.reason}")
        raise DriverUnavailable(
            "auto",
            "no usable VM driver on this machine (" + "; ".join(reasons) + ")",
            "run `projectvm doctor` for details, or pick one with --driver",
        )

    def _check_production(self) -> None:
        """Production (Fly) needs a token and an app name, set where the seed said."""
        fly = self._options.get("fly", {})
        missing = [
            hint
            for name, option, hint in (
                (
                    "FLY_API_TOKEN",
                    "api_token",
                    "FLY_API_TOKEN (an org token: fly tokens create org)",
                ),
                (
                    "FLY_APP_NAME",
                    "app_prefix",
                    "FLY_APP_NAME (the name your project apps begin with)",
                ),
            )
            if not os.environ.get(name) and not fly.get(option)
        ]
        if missing:
            raise DriverUnavailable(
                "fly",
                "VM_SERVICE=production runs projects on Fly.io Machines, and needs "
                + " and ".join(missing),
                "set them (export NAME=...) and start again; README: Production on Fly",
            )

    async def _usable(self, name: str, asked_by: str) -> str:
        try:
            self.config(name)
        except DriverConfigError as err:
            raise DriverConfigError(f"{asked_by}: {err}") from err
        availability = await self.probe(name)
        if not availability.usable:
            raise DriverUnavailable(
                name,
                f"{availability.reason} (asked for by {asked_by})",
                "run `projectvm doctor` to see what works here",
            )
        return name

    async def aclose(self) -> None:
        for driver in self._drivers.values():
            await driver.aclose()
        self._drivers.clear()
