"""The local sandbox's plan, read as data: what it shows of the host, who it runs as, how it
waits for its id maps and network. (The real sandbox is tested in tests/security.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from vm_drivers.sandbox.identity import AGENT_CAPS, SandboxIdentity
from vm_drivers.sandbox.launch import SandboxPlan
from vm_drivers.sandbox.root import SLIRP_DNS, SandboxRoot, etc_files

NEVER_SHOWN = ("/var", "/opt", "/srv", "/mnt", "/media", "/home", "/root", "/run", "/boot")


def plan(
    identity: SandboxIdentity, *, egress: bool = False, tree: Path | None = None
) -> SandboxPlan:
    staged = {
        "workspace": Path("/data/local/workspaces/pvm-x"),
        "agent.pyz": Path("/data/local/agent/agent.pyz"),
        "etc": Path("/data/local/sandboxes/pvm-x/etc"),
    }
    return SandboxPlan(
        bwrap="/usr/bin/bwrap",
        identity=identity,
        root=SandboxRoot(tree),
        python="/usr/bin/python3",
        hostname="pvm-x",
        egress=egress,
        staged=staged,
        etc_names=["group", "hostname", "hosts", "passwd", "resolv.conf"],
        stage=Path("/run/projectvm-local/stage") if identity.privileged else None,
        foreign_mounts=[Path("/data/local/workspaces")],
    )


ROOT = SandboxIdentity(privileged=True, uid_base=2_000_000_000, gid_base=2_000_000_000, run_as=True)
ROOT_WITHOUT_RUN_AS = SandboxIdentity(True, 2_000_000_000, 2_000_000_000, run_as=False)
USER = SandboxIdentity(privileged=False, uid_base=1234, gid_base=1234, run_as=False)


def bwrap_part(argv: list[str]) -> list[str]:
    return argv[argv.index("/usr/bin/bwrap") :]


def shown_paths(argv: list[str]) -> list[str]:
    """Destinations of every bind (what the sandbox sees of the host)."""
    found = []
    for index, arg in enumerate(argv):
        if arg in ("--ro-bind", "--bind"):
            found.append(argv[index + 2])
    return found


def test_the_host_view_shows_usr_and_a_few_etc_files_and_nothing_private() -> None:
    argv = bwrap_part(plan(ROOT).command(7, 8, (9, 10, 11)))
    for path in shown_paths(argv):
        # (/bin, /sbin, /lib... are links into /usr, or directories on older systems)
        allowed = ("/usr", "/bin", "/sbin", "/lib", "/etc/", "/workspace", "/.projectvm/")
        assert path.startswith(allowed), path
        assert not path.startswith(NEVER_SHOWN), path
    assert "/etc/shadow" not in shown_paths(argv)
    assert "/etc/passwd" in shown_paths(argv)  # the sandbox's own, from the stage


def test_a_root_server_runs_bubblewrap_as_the_range_and_waits_for_its_maps() -> None:
    argv = plan(ROOT).command(7, 8, (9, 10, 11))
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    drop = argv.index("setpriv")
    assert argv[drop + 1 : drop + 3] == ["--reuid=2000000000", "--regid=2000000000"]
    bwrap = bwrap_part(argv)
    assert bwrap[1:6] == ["--unshare-user", "--userns-block-fd", "8", "--info-fd", "7"]
    assert "--unshare-net" in bwrap
    assert bwrap[-2:] == ["--run-as", "1000:1000"]
    caps = [bwrap[i + 1] for i, arg in enumerate(bwrap) if arg == "--cap-add"]
    assert sorted(caps) == sorted(AGENT_CAPS)


def test_without_run_as_the_agent_and_commands_keep_no_capabilities() -> None:
    bwrap = bwrap_part(plan(ROOT_WITHOUT_RUN_AS).command(7, 8, (9, 10, 11)))
    assert "--cap-add" not in bwrap
    assert "--run-as" not in bwrap
    assert ROOT_WITHOUT_RUN_AS.workspace_owner() == (2_000_000_000, 2_000_000_000)
    assert ROOT.workspace_owner() == (2_000_001_000, 2_000_001_000)


def test_egress_gets_the_launchers_network_namespace_not_the_hosts() -> None:
    argv = plan(ROOT, egress=True).command(7, 8, (9, 10, 11))
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--net"]
    assert "--unshare-net" not in bwrap_part(argv)
    assert "--share-net" not in argv
    user = plan(USER, egress=True).command(7, 8, (9, 10, 11))
    assert user[:5] == ["unshare", "--user", "--map-current-user", "--net", "--"]


def test_an_unprivileged_server_maps_only_itself_and_stages_nothing() -> None:
    argv = plan(USER).command(7, 8, (9, 10, 11))
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[1:6] == ["--unshare-user", "--block-fd", "8", "--info-fd", "7"]
    assert "setpriv" not in argv
    assert "/data/local/workspaces/pvm-x" in argv  # reached directly, no stage
    assert USER.describe().startswith("single uid")


def test_the_sandbox_etc_names_no_host_user_and_resolves_through_slirp() -> None:
    files = etc_files(hostname="pvm-x", egress=True, user=(1000, 1000), tree=None)
    users = [line.split(":")[0] for line in files["passwd"].splitlines()]
    assert users == ["root", "pvm", "nobody"]
    assert files["resolv.conf"] == f"nameserver {SLIRP_DNS}\n"
    offline = etc_files(hostname="pvm-x", egress=False, user=(1000, 1000), tree=None)
    assert offline["resolv.conf"] == ""


def test_the_image_tree_is_the_root_and_its_secrets_stay_out(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for directory in ("usr/bin", "etc", "var/tmp", "opt", "proc", "tmp"):
        (tree / directory).mkdir(parents=True)
    (tree / "bin").symlink_to("usr/bin")
    for name in ("shadow", "passwd", "os-release"):
        (tree / "etc" / name).write_text("x\n")
    argv = bwrap_part(plan(ROOT, tree=tree).command(7, 8, (9, 10, 11)))
    shown = shown_paths(argv)
    assert "/etc/os-release" in shown
    assert "/etc/shadow" not in shown
    assert "/opt" in shown  # the image's own /opt
    assert "/proc" not in shown
    assert argv[argv.index("/bin") - 2 : argv.index("/bin") + 1] == ["--symlink", "usr/bin", "/bin"]


@pytest.mark.parametrize("identity", [ROOT, USER])
def test_the_agent_gets_its_channel_on_descriptors_of_its_own(identity: SandboxIdentity) -> None:
    argv = plan(identity).command(7, 8, (9, 10, 11))
    shim = argv.index("-c", argv.index("/usr/bin/python3"))
    assert argv[shim + 2 : shim + 6] == ["9", "10", "11", "/.projectvm/agent.pyz"]
