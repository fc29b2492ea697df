"""Work inside a running Lima instance: short shell scripts, file copies, and the agent's launch.

All of it goes through ``limactl shell --workdir / NAME -- ...`` (ssh underneath) and
``limactl copy``. Lima runs the command through the user's *login* shell, whose profile may
print: script output is read after a marker line, never from the first byte.

Scripts run as Lima's user. The agent runs as root and its commands as ``COMMAND_USER`` (see
``guest_launcher``), so a script that touches them (ends an agent, removes a workspace) uses
the ``asroot`` shell function: ``sudo -n``, which Lima's user may use without a password.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from guest_runtime.agent.identity import COMMAND_USER
from vm_drivers.errors import GuestUnreachable
from vm_drivers.lima.limactl import Limactl

__all__ = [
    "COMMAND_USER",
    "EXPAND_HOME",
    "LAUNCHER_SOURCE",
    "Guest",
    "Launch",
    "home_relative",
]

# Shell functions scripts use: on paths the driver passes ("~/x" means the Lima user's home),
# and for what only root may do (the agent and the workspace are not Lima's user's).
EXPAND_HOME = (
    'expand() { case "$1" in "~/"*) printf "%s/%s" "$HOME" "${1#"~/"}";; '
    '*) printf "%s" "$1";; esac; }; '
    'asroot() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n -- "$@"; fi; }; '
)
LAUNCHER_SOURCE = resources.files("vm_drivers.lima").joinpath("guest_launcher.py").read_text()


def home_relative(path: str) -> str:
    """A guest path as ``limactl copy`` takes it: relative paths are under the user's home."""
    return path[2:] if path.startswith("~/") else path


@dataclass(frozen=True)
class Launch:
    """Where and how to start a VM's agent: the instance and the launcher's options."""

    instance: str
    agent: str
    root: str
    pidfile: str
    project_id: str
    sandbox: str = "none"
    network: str = "none"
    hide: list[str] = field(default_factory=list)
    # The guest user commands run as (the provisioning script and the launcher make it): no
    # sudo, not the agent's; named like the USER the agent gives commands. None: the agent's.
    command_user: str | None = COMMAND_USER

    @property
    def staged(self) -> str:
        """Where ``limactl copy`` puts a new agent: Lima's user cannot write the agent's directory
        (root's), so its home; the launcher checks it and moves it in as root."""
        return f"~/{PurePosixPath(self.agent).name}.incoming"

    def options(self, marker: str) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "staged": self.staged,
            "root": self.root,
            "pidfile": self.pidfile,
            "project_id": self.project_id,
            "sandbox": self.sandbox,
            "network": self.network,
            "hide": self.hide,
            "command_user": self.command_user,
            "marker": marker,
        }


class Guest:
    def __init__(self, limactl: Limactl, *, timeout_s: float) -> None:
        self.limactl = limactl
        self.timeout_s = timeout_s

    async def run(self, instance: str, script: str, *args: str, action: str) -> str:
        """Run ``sh -c script sh args...`` in the instance; what it printed after the marker."""
        marker = f"projectvm-output-{secrets.token_hex(8)}"
        output = await self.limactl.run(
            "shell",
            "--workdir",
            "/",
            instance,
            "--",
            "sh",
            "-c",
            f'printf "%s\\n" {marker}; {EXPAND_HOME}{script}',
            "sh",
            *args,
            timeout_s=self.timeout_s,
            action=action,
        )
        text = output.decode(errors="replace")
        before, found, after = text.partition(marker + "\n")
        if not found:
            raise GuestUnreachable(
                f"{action}: the shell in Lima instance {instance} printed no marker "
                f"({before[-200:]!r}); check `limactl shell {instance} true`"
            )
        return after

    async def copy_in(self, instance: str, local: Path, remote: str) -> None:
        await self.limactl.run(
            "copy",
            str(local),
            f"{instance}:{home_relative(remote)}",
            timeout_s=self.timeout_s,
            action=f"copying {local.name} into Lima instance {instance}",
        )

    def launcher_argv(self, launch: Launch, marker: str) -> list[str]:
        """``limactl shell`` running the launcher, which becomes the agent (see guest_launcher)."""
        options = json.dumps(launch.options(marker), separators=(",", ":"))
        return self.limactl.argv(
            "shell",
            "--workdir",
            "/",
            launch.instance,
            "--",
            "python3",
            "-c",
            LAUNCHER_SOURCE,
            options,
        )
