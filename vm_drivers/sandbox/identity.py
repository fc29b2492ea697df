"""Who a sandbox's processes are on the host.

When the server runs as root, every sandbox gets a user namespace whose ids 0..65535 map to an
unprivileged host range starting at ``uid_base``: the sandbox's root is host uid ``uid_base``,
never 0, so a file it can reach is only as exposed as to a stranger. The guest agent runs as the
namespace's root, keeping only the capabilities it needs to manage the workspace and its
commands, and (when the agent supports ``--run-as``) runs every command as uid 1000: commands
then cannot signal, trace or read the agent.

When the server is not root it can map only its own uid: agent and commands share that one uid
inside and outside (``limits`` says what that leaves open).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["COMMAND_UID", "ID_RANGE", "SandboxIdentity", "agent_has_run_as"]

COMMAND_UID = 1000
ID_RANGE = 65536
# What the agent needs as the namespace's root when commands run as another uid: manage files
# whatever their owner or mode, give them to the commands' uid, switch to it, and end commands.
AGENT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
)


@functools.cache
def agent_has_run_as() -> bool:
    """Whether the guest agent shipped with this server accepts ``--run-as UID:GID`` (commands
    under another uid than the agent's). Until it does, commands run as the agent's uid."""
    source = resources.files("guest_runtime") / "agent" / "__main__.py"
    return "--run-as" in source.read_text()


@dataclass(frozen=True)
class SandboxIdentity:
    """``privileged``: a 65,536-id range from ``uid_base``; else the server's own uid only."""

    privileged: bool
    uid_base: int
    gid_base: int
    run_as: bool

    @classmethod
    def for_this_server(cls, uid_base: int, run_as: bool | None = None) -> SandboxIdentity:
        privileged = os.geteuid() == 0
        if not privileged:
            return cls(False, os.geteuid(), os.getegid(), run_as=False)
        return cls(True, uid_base, uid_base, agent_has_run_as() if run_as is None else run_as)

    # -- ids ----------------------------------------------------------------------------------

    def host_uid(self, sandbox_uid: int) -> int:
        if not self.privileged:
            return self.uid_base
        return self.uid_base + sandbox_uid

    def workspace_owner(self) -> tuple[int, int]:
        """Host (uid, gid) that owns the workspace: the uid commands run as."""
        inside = COMMAND_UID if self.run_as else 0
        if not self.privileged:
            return self.uid_base, self.gid_base
        return self.uid_base + inside, self.gid_base + inside

    def write_maps(self, pid: int) -> None:
        """Give the user namespace of ``pid`` (a sandbox waiting on its id maps) our range."""
        proc = Path(f"/proc/{pid}")
        (proc / "uid_map").write_text(f"0 {self.uid_base} {ID_RANGE}\n")
        (proc / "gid_map").write_text(f"0 {self.gid_base} {ID_RANGE}\n")

    # -- what bubblewrap and the agent are told -----------------------------------------------

    def drop_to(self) -> list[str]:
        """The prefix that runs bubblewrap itself as the range's first uid (as root only), so
        the namespace it makes is owned by that uid and nothing of the sandbox is host root."""
        if not self.privileged:
            return []
        return [
            "setpriv",
            f"--reuid={self.uid_base}",
            f"--regid={self.gid_base}",
            "--clear-groups",
            "--",
        ]

    def capability_args(self) -> list[str]:
        args = ["--cap-drop", "ALL"]
        if self.privileged and self.run_as:
            for cap in AGENT_CAPS:
                args += ["--cap-add", cap]
        return args

    def agent_args(self) -> list[str]:
        """The agent's ``--run-as`` (the one place it is passed; see ``agent_has_run_as``)."""
        if self.privileged and self.run_as:
            return ["--run-as", f"{COMMAND_UID}:{COMMAND_UID}"]
        return []

    def passwd_entry(self) -> tuple[int, int]:
        """The (uid, gid) commands have inside, for /etc/passwd's ``pvm`` entry."""
        if not self.privileged:
            return self.uid_base, self.gid_base
        inside = COMMAND_UID if self.run_as else 0
        return inside, inside

    def describe(self) -> str:
        """What a command is on this host, for ``probe()`` details."""
        if not self.privileged:
            return (
                f"single uid: agent and commands run as the server's uid {self.uid_base} inside "
                "and outside the sandbox (the server is not root, so no other uid can be mapped); "
                "a command can signal the guest agent, though not trace it or read its files"
            )
        first, last = self.uid_base, self.uid_base + ID_RANGE - 1
        who = (
            f"commands as uid {COMMAND_UID} (host {self.uid_base + COMMAND_UID}), the agent as "
            f"the namespace's root (host {self.uid_base})"
            if self.run_as
            else f"agent and commands as the namespace's root (host {self.uid_base}), with no "
            "capabilities (this agent has no --run-as yet)"
        )
        return f"user namespace mapped to host uids {first}-{last}: {who}"
