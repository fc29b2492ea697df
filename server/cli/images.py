"""``projectvm image build`` and ``projectvm image status``: the runtime image, no registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from guest_runtime.errors import ProjectVMError
from guest_runtime.image.builder import ImageOutput, build_image
from guest_runtime.image.docker_image import DockerImage
from guest_runtime.image.rootfs import IMAGE_VERSION
from server.cli.common import load_config, say
from vm_drivers.base import DriverContext
from vm_drivers.docker import DockerDriver
from vm_drivers.registry import DriverSet

__all__ = ["image"]


async def image(args: argparse.Namespace) -> None:
    config = load_config(args)
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        driver = drivers.get("docker")
        assert isinstance(driver, DockerDriver)
        availability = await driver.probe()
        engine = availability.details.get("engine")
        if engine is None:
            raise ProjectVMError(availability.reason)
        if args.image_command == "status":
            say(f"engine: {engine}")
            for key, value in availability.details.items():
                if key.startswith("image "):
                    say(f"{key}: {value}")
            return
        tag = args.tag or f"projectvm/{args.template}:{IMAGE_VERSION}"
        outputs: list[ImageOutput] = [DockerImage(await driver.client(), tag)]
        work = Path(args.work_dir or config.data_dir / "build")
        say(f"building {tag} from Debian packages (no registry) on {engine}")
        made = await build_image(
            args.template, outputs, work, mirror=args.mirror, progress=say, keep=args.keep
        )
        for line in made:
            say(f"done: {line}")
    finally:
        await drivers.aclose()
