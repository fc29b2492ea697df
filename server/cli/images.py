"""``projectvm image build|status|push``: the runtime image, built without a registry.

One Debian tree per template (debootstrap, then apt) becomes every driver's image: the Docker
Engine image, the VM drivers' boot artifacts, and the local sandbox's root.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from guest_runtime.errors import ProjectVMError
from guest_runtime.image.artifacts import ArtifactsError, current_artifacts
from guest_runtime.image.builder import (
    ImageOutput,
    VMImage,
    build_image,
    tree_is_current,
    tree_path,
)
from guest_runtime.image.docker_image import DockerImage
from guest_runtime.image.rootfs import IMAGE_VERSION
from server.cli.common import load_config, say
from server.cli.image_push import push
from vm_drivers.base import DriverContext
from vm_drivers.docker import DockerDriver
from vm_drivers.registry import DriverSet

__all__ = ["image"]

VM_TOOLS = ("qemu-system-x86_64", "firecracker")


async def image(args: argparse.Namespace) -> None:
    config = load_config(args)
    if args.image_command == "push":
        await push(config, args)
        return
    drivers = DriverSet(DriverContext.for_data_dir(config.data_dir), config.drivers)
    try:
        docker = drivers.get("docker")
        assert isinstance(docker, DockerDriver)
        if args.image_command == "status":
            await _status(config.data_dir, docker, args)
        else:
            await _build(config.data_dir, docker, args)
    finally:
        await drivers.aclose()


async def _build(data_dir: Path, docker: DockerDriver, args: argparse.Namespace) -> None:
    wanted = set(args.targets.split(",")) if args.targets != "auto" else None
    outputs: list[ImageOutput] = []
    availability = await docker.probe()
    engine = availability.details.get("engine")
    tag = args.tag or f"projectvm/{args.template}:{IMAGE_VERSION}"
    if wanted is None or "docker" in wanted:
        if engine is not None:
            outputs.append(DockerImage(await docker.client(), tag))
        elif wanted is not None:
            raise ProjectVMError(f"cannot build the docker image: {availability.reason}")
        else:
            say(f"skipping the docker image: {availability.reason}")
    if wanted is None or "vm" in wanted:
        if wanted is not None or any(shutil.which(tool) for tool in VM_TOOLS):
            outputs.append(VMImage(data_dir))
        else:
            say("skipping the VM image: neither QEMU nor Firecracker is installed here")
    targets = ", ".join(output.description for output in outputs) or "the root filesystem only"
    say(f"building the {args.template} image for: {targets} (no registry)")
    made = await build_image(
        data_dir,
        args.template,
        outputs,
        mirror=args.mirror,
        rebuild=args.rebuild,
        progress=say,
    )
    say(f"done: root filesystem {tree_path(data_dir, args.template)} (the local sandbox's root)")
    for line in made:
        say(f"done: {line}")


async def _status(data_dir: Path, docker: DockerDriver, args: argparse.Namespace) -> None:
    report: dict[str, Any] = {"trees": {}, "docker": {}, "vm": None}
    for template in ("runtime", "minimal"):
        tree = tree_path(data_dir, template)
        report["trees"][template] = {
            "path": str(tree),
            "present": tree_is_current(tree, template),
        }
    availability = await docker.probe()
    report["docker"] = {"reason": availability.reason, **availability.details}
    try:
        artifacts = current_artifacts(data_dir)
    except ArtifactsError as err:
        report["vm"] = {"present": False, "reason": str(err)}
    else:
        manifest = json.loads((artifacts.directory / "manifest.json").read_text())
        report["vm"] = {
            "present": True,
            "digest": artifacts.digest,
            "directory": str(artifacts.directory),
            "kernel": artifacts.kernel_release,
            "files": manifest["files"],
        }
    if args.json:
        say(json.dumps(report, indent=2))
        return
    for template, tree in report["trees"].items():
        state = "present" if tree["present"] else "missing"
        say(f"root filesystem {template}: {state} ({tree['path']})")
    engine = report["docker"].get("engine")
    say(f"docker engine: {engine or report['docker']['reason']}")
    for key, value in report["docker"].items():
        if key.startswith("image "):
            say(f"  {key}: {value}")
    vm = report["vm"]
    if not vm["present"]:
        say(f"VM image: missing ({vm['reason']})")
        return
    say(f"VM image {vm['digest']} in {vm['directory']} (kernel {vm['kernel']})")
    for name, info in vm["files"].items():
        say(f"  {name:<20} {info['size']:>12,} bytes  sha256 {info['sha256']}")
