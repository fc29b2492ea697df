"""``projectvm image push``: the runtime image, with the guest agent baked in, to a registry.

For drivers whose VMs pull their image (fly). The root filesystem is the one ``projectvm image
build`` makes (built here first when missing); no Docker engine is needed. The pushed image is
printed pinned by digest, with the config.toml line that makes the fly driver use it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import anyio
from pydantic import SecretStr

from guest_runtime.errors import ProjectVMError
from guest_runtime.image.builder import build_image, tree_is_current, tree_path
from guest_runtime.image.rootfs import tar_rootfs
from server.cli.common import say
from server.domain.config import ServerConfig
from vm_drivers.config import FlyDriverConfig
from vm_drivers.image_push import RegistryAuth, push_runtime_image

__all__ = ["push"]


def _target(config: ServerConfig, asked: str | None) -> str:
    if asked:
        return asked
    configured = config.drivers.get("fly", {}).get("image")
    return str(configured or FlyDriverConfig().image)


def _auth(args: argparse.Namespace) -> RegistryAuth | None:
    if args.password_env == "none":
        return None
    password = os.environ.get(args.password_env, "").strip()
    if not password:
        raise ProjectVMError(
            f"no registry password: {args.password_env} is not set; export it (for Fly's "
            "registry, an API token: `fly tokens create org`), or name another variable with "
            "--password-env (none = push without credentials)"
        )
    return RegistryAuth(args.username, SecretStr(password))


async def push(config: ServerConfig, args: argparse.Namespace) -> None:
    target = _target(config, args.to)
    auth = _auth(args)
    tree = tree_path(config.data_dir, args.template)
    if not tree_is_current(tree, args.template):
        say(f"the {args.template} root filesystem is not built yet: building it first")
        await build_image(config.data_dir, args.template, [], mirror=args.mirror, progress=say)
    scratch = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
    try:
        archive = scratch / "rootfs.tar"
        await tar_rootfs(tree, archive, say)
        pinned = await push_runtime_image(archive, target, auth=auth, progress=say)
    finally:
        await anyio.to_thread.run_sync(_remove_tree, scratch)
    say(f"pushed: {pinned}")
    say("use it for new fly projects (pinned by digest), in config.toml:")
    say("  [drivers.fly]")
    say(f'  image = "{pinned}"')


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
