"""Who commands run as (``--run-as UID:GID``), and who owns what the agent writes.

The agent holds the channel to the host; a command that could reach the agent's descriptors
(``/proc/<agent>/fd``), signal it or trace it could forge any other command's results. So where
the agent is root in its namespace and the uid is mapped there, every command runs as the
``--run-as`` uid and gid (no supplementary groups), while the agent keeps its own identity and
stays not dumpable. Every file and directory the agent creates through ``fs.*`` is then owned
by that uid, so commands can change what the API wrote, and a workspace still owned by someone
else (made before this flag existed) is handed over once, when the agent starts.

Without the flag, or where the agent cannot switch (an unprivileged sandbox that maps one uid),
commands run as the agent's own uid: they cannot read its descriptors (it is not dumpable),
but they can still send it signals.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

log = logging.getLogger("projectvm.agent")

COMMAND_USER = "pvm"
# What the agent needs to keep commands apart: switching to their identity (SETUID, SETGID),
# as root, handing them files (CHOWN) in directories they own (DAC_OVERRIDE, FOWNER), and
# ending their processes, which are another uid's (KILL).
NEEDED_CAPABILITIES = {
    0: "CAP_CHOWN",
    1: "CAP_DAC_OVERRIDE",
    3: "CAP_FOWNER",
    5: "CAP_KILL",
    6: "CAP_SETGID",
    7: "CAP_SETUID",
}


class Identity:
    """The uid and gid commands run as, and own the workspace's files under."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid

    def __repr__(self) -> str:
        return "%d:%d" % (self.uid, self.gid)

    def own_fd(self, fd: int) -> None:
        os.fchown(fd, self.uid, self.gid)

    def own_entry(self, name: str, dir_fd: int) -> None:
        os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)

    def drop_privileges(self) -> None:
        """In a command's child process, before it execs: become the command user for good."""
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)

    def environment(self, root: str) -> List[Tuple[str, str]]:
        return [("HOME", root), ("USER", COMMAND_USER), ("LOGNAME", COMMAND_USER)]


def parse_run_as(text: str) -> Identity:
    """``UID:GID`` as an identity, or ValueError saying what is wrong."""
    uid_text, sep, gid_text = text.partition(":")
    if not sep or not uid_text.isdigit() or not gid_text.isdigit():
        raise ValueError("--run-as takes UID:GID as two numbers, such as 1000:1000, not %r" % text)
    uid, gid = int(uid_text), int(gid_text)
    if uid == 0 or gid == 0:
        raise ValueError("--run-as must name an unprivileged uid and gid, not %r" % text)
    return Identity(uid, gid)


def _mapped(path: str, wanted: int) -> bool:
    """Whether ``wanted`` is mapped in this user namespace (``/proc/self/uid_map`` lines)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return True  # no /proc to ask: the switch itself will tell
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(field.isdigit() for field in fields):
            inside, _, count = (int(field) for field in fields)
            if inside <= wanted < inside + count:
                return True
    return False


def _missing_capabilities() -> List[str]:
    """The needed capabilities this process lacks (none known missing without /proc)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
                    break
            else:
                return []
    except (OSError, ValueError, IndexError):
        return []
    return [name for bit, name in sorted(NEEDED_CAPABILITIES.items()) if not effective >> bit & 1]


def effective(requested: Optional[Identity]) -> Tuple[Optional[Identity], str]:
    """The identity commands will run as (None: the agent's own), and why, for the logs."""
    if requested is None:
        return None, "commands run as the agent's own uid %d (no --run-as)" % os.getuid()
    if os.geteuid() != 0:
        return None, (
            "--run-as %r is ignored: the agent is not root in its namespace (uid %d); commands "
            "run as the agent's own uid" % (requested, os.geteuid())
        )
    for path, wanted in (
        ("/proc/self/uid_map", requested.uid),
        ("/proc/self/gid_map", requested.gid),
    ):
        if not _mapped(path, wanted):
            return None, (
                "--run-as %r is ignored: %d is not mapped in this user namespace (%s); commands "
                "run as the agent's own uid" % (requested, wanted, path)
            )
    missing = _missing_capabilities()
    if missing:
        return None, (
            "--run-as %r is ignored: the agent lacks %s, which it needs to keep commands apart; "
            "commands run as the agent's own uid" % (requested, ", ".join(missing))
        )
    return requested, "commands run as %r; the agent stays uid %d" % (requested, os.getuid())


def adopt_workspace(root: str, owner: Identity) -> int:
    """Hand a workspace not yet owned by ``owner`` over to it, at any depth; returns how many
    entries changed owner (0 when the root already belongs to it: the usual case)."""
    from .paths import DIR_FLAGS
    from .walk import Walk

    fd = os.open(root, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) == (owner.uid, owner.gid):
            return 0
        changed = 0
        with Walk(os.dup(fd), []) as walk:
            for entry in walk:
                if (entry.st.st_uid, entry.st.st_gid) != (owner.uid, owner.gid):
                    owner.own_entry(entry.name, entry.dir_fd)
                    changed += 1
        owner.own_fd(fd)  # last: a root that belongs to the owner means "done"
        return changed + 1
    finally:
        os.close(fd)
