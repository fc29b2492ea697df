"""fake-limactl: a stand-in for Lima 2.x's ``limactl``, for machines without Lima (or macOS).

It follows Lima 2.x's argument grammar, messages, exit codes and ``list --json`` output as far as
the ProjectVM lima driver uses them, quirks included:

- ``start NAME`` on a missing name creates the instance from ``template:default`` first
  (deprecated in Lima, but it still works);
- ``start`` on a Running instance logs "already running" and exits 0;
- ``stop`` on an instance that is not Running fails ("expected status Running ... maybe use
  `limactl stop -f`?"); ``stop -f`` always succeeds;
- ``create`` on an existing name fails; ``delete`` of a missing name warns and exits 0;
- ``list --json`` prints one JSON object per line; an unknown name warns and exits 1; with no
  instances at all it prints nothing and exits 0;
- ``param`` keys that no provision entry uses are refused at create time.

An instance is a directory under ``$LIMA_HOME``: its ``lima.yaml`` and ``disk/``, the writable
root filesystem of its "VM". ``start`` launches a host agent (``fake-limactl hostagent NAME``,
like Lima's own hidden command) that runs the VM as a bubblewrap sandbox with its own PID,
network (loopback only), IPC and UTS namespaces: ``disk/`` is ``/``, and the host's ``/usr``,
``/etc`` and package database, read-only, are the image. Run as root (as CI does), the VM has
every uid and root's capabilities, like a VM's root, and a writable copy of ``/etc`` (made on
first boot) where provisioning adds users; the guest user is then root itself, which needs no
sudo. Run unprivileged, the VM is a user namespace that maps one uid (the caller's, as 0): no
other user can exist in it (``single_uid_reason`` says so). The host agent then runs the provision
entries (``data``, ``system``, ``user``; also those of ``$LIMA_HOME/_config/default.yaml`` and
``override.yaml``) inside. ``shell`` enters the VM's namespaces with nsenter and runs the command
the way Lima's ssh session does: ``cd DIR || exit 1 ; exec "$SHELL" --login -c '<argv>'``.
``stop`` ends the VM's PID namespace, so every process in it dies, as in a shutdown.

Not emulated: kernels and images (``base``/``images`` are recorded, not fetched), mounts, port
forwarding, Lima's user-mode network (a fake VM has loopback only), disks, snapshots, and Lima's
own user: ``limactl shell`` runs as uid 0 (root, or root of the one-uid namespace), which is
what ``{{.UID}}`` expands to. A root fake VM's root can change the host's read-only image
mounts: tests only run the driver's own scripts there. ``lima.yaml`` is read as YAML's JSON
form (what the driver writes), or with PyYAML when it is installed.

Every invocation is appended to ``$LIMA_HOME/_fake/calls.jsonl`` so tests can check exactly what
a driver ran. Knobs: ``FAKE_LIMACTL_VERSION`` (the version reported; default 2.2.0) and
``FAKE_LIMACTL_AS_ROOT=1`` (behave as the real limactl does under root: refuse every command),
``FAKE_LIMACTL_SINGLE_UID=1`` (one-uid VMs even when run as root, as when run unprivileged).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

VERSION = os.environ.get("FAKE_LIMACTL_VERSION", "2.2.0")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$")
LONGEST_SOCK = "ssh.sock.1234567890123456"
UNIX_PATH_MAX = 108  # Linux; 104 on macOS
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The "image": host directories a fake VM sees read-only.
IMAGE_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
DEFAULT_TEMPLATE: dict[str, Any] = {
    "minimumLimaVersion": "1.1.0",
    "base": ["template:_images/ubuntu", "template:_default/mounts"],
    "mounts": [{"location": "~"}, {"location": "/tmp/lima", "writable": True}],
    "containerd": {"system": False, "user": True},
}
TEMPLATES = {
    "default": DEFAULT_TEMPLATE,
    "debian-12": {"base": ["template:_images/debian-12", "template:_default/mounts"]},
    "ubuntu-24.04": {"base": ["template:_images/ubuntu-24.04", "template:_default/mounts"]},
}


class Fatal(Exception):
    """Ends the command like logrus.Fatal: the message on stderr, exit status 1."""


# -- logging, as logrus prints it --------------------------------------------------------------


class Log:
    format = "text"

    @classmethod
    def emit(cls, level: str, message: str, **fields: Any) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if cls.format == "json":
            line = json.dumps({"level": level, "msg": message, "time": now, **fields})
        else:
            extra = "".join(f" {key}={json.dumps(value)}" for key, value in fields.items())
            line = f'time="{now}" level={level} msg={json.dumps(message)}{extra}'
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    @classmethod
    def info(cls, message: str) -> None:
        cls.emit("info", message)

    @classmethod
    def warn(cls, message: str) -> None:
        cls.emit("warning", message)


def q(text: str) -> str:
    """Go's %q, which Lima uses for names in messages."""
    return json.dumps(text)


def stopped(name: str) -> NoReturn:
    fatal(f"instance {q(name)} is stopped, run `limactl start {name}` to start the instance")


def fatal(message: str) -> NoReturn:
    raise Fatal(message)


# -- flags, the cobra way ------------------------------------------------------------------------

GLOBAL_FLAGS = {
    "tty": "bool",
    "log-format": "str",
    "log-level": "str",
    "debug": "bool",
    "yes": "bool",
}
SHORT = {"y": "yes", "f": "force", "r": "recursive", "q": "quiet", "v": "verbose"}


def parse_flags(
    args: list[str], spec: dict[str, str], interspersed: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """``--name=v``, ``--name v``, ``-x``; kinds: bool, str, list. Unknown flags are fatal."""
    known = {**GLOBAL_FLAGS, **spec}
    flags: dict[str, Any] = {}
    positionals: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positionals.extend(args[index:])
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            if not interspersed:
                positionals.extend(args[index:])
                break
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--"):
            name = SHORT.get(name, name)
        kind = known.get(name)
        if kind is None:
            fatal(f"unknown flag: {arg.split('=')[0]}")
        if kind == "bool":
            flags[name] = value.lower() not in ("false", "0") if has_value else True
            continue
        if not has_value:
            if index >= len(args):
                fatal(f"flag needs an argument: {arg}")
            value = args[index]
            index += 1
        if kind == "list":
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = value
    if "log-format" in flags:
        Log.format = flags["log-format"]
    return flags, positionals


def parse_duration(text: str) -> float:
    """A Go duration such as 10m, 90s, 1h30m, 2.5s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        fatal(f'invalid argument "{text}" for "--timeout" flag: time: invalid duration "{text}"')
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def parse_size(value: Any) -> int:
    """Lima sizes: "4GiB", "512MiB", "100G", or a number of bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", str(value))
    if match is None:
        fatal(f"invalid size {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * (1 << (10 * "_KMGT".index(unit or "_"))) if unit else number)


# -- lima.yaml -----------------------------------------------------------------------------------


def load_yaml(text: str, origin: str) -> dict[str, Any]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            fatal(
                f"{origin}: the fake limactl reads lima.yaml in YAML's JSON form only "
                "(install PyYAML for block YAML)"
            )
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            fatal(f"{origin}: {err}")
    if not isinstance(data, dict):
        fatal(f"{origin}: a lima.yaml must be a mapping")
    return data


def apply_set(config: dict[str, Any], expression: str) -> None:
    """The subset of yq the driver needs: ``.a.b = <JSON or bare value>``."""
    match = re.fullmatch(r"\s*((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*=\s*(.+?)\s*", expression)
    if match is None:
        fatal(f"the fake limactl supports only '.path = value' for --set, got {expression!r}")
    keys = match.group(1).split(".")[1:]
    try:
        value = json.loads(match.group(2))
    except ValueError:
        value = match.group(2)
    target = config
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def apply_edit_flags(config: dict[str, Any], flags: dict[str, Any]) -> None:
    if "cpus" in flags:
        config["cpus"] = int(flags["cpus"])
    for name in ("memory", "disk"):
        if name in flags:
            config[name] = f"{float(flags[name]):g}GiB"
    if "vm-type" in flags:
        config["vmType"] = flags["vm-type"]
    if flags.get("plain"):
        config["plain"] = True
    if "containerd" in flags:
        mode = flags["containerd"]
        config["containerd"] = {"system": "system" in mode, "user": "user" in mode}
    if flags.get("mount-none"):
        config["mounts"] = []
    for expression in flags.get("set", []):
        apply_set(config, expression)


def check_params(config: dict[str, Any]) -> None:
    texts = [
        json.dumps(entry)
        for key in ("provision", "probes", "copyToHost", "portForwards")
        for entry in config.get(key) or []
    ]
    for key in config.get("param") or {}:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            fatal(f"param {q(key)} name is invalid")
        if not any(f".Param.{key}" in text or f"PARAM_{key}" in text for text in texts):
            fatal(
                f"field `param` key {q(key)} is not used in any provision, probe, copyToHost, "
                "or portForward"
            )


# -- instances -----------------------------------------------------------------------------------


def lima_home() -> Path:
    return Path(os.environ.get("LIMA_HOME") or Path.home() / ".lima")


def guest_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "lima"


class Instance:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = lima_home() / name
        self.yaml_path = self.dir / "lima.yaml"
        self.disk = self.dir / "disk"

    @property
    def exists(self) -> bool:
        return self.dir.is_dir()

    def config(self) -> dict[str, Any]:
        return load_yaml(self.yaml_path.read_text(), str(self.yaml_path))

    def errors(self) -> list[str]:
        try:
            self.config()
        except (Fatal, OSError) as err:
            return [str(err)]
        return []

    def pid(self, filename: str) -> int | None:
        try:
            pid = int((self.dir / filename).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # A recycled pid is not ours: the host agent names its instance in its command line.
        if filename == "ha.pid" and self.name.encode() not in cmdline:
            return None
        return pid

    @property
    def status(self) -> str:
        if self.errors():
            return "Broken"
        if self.pid("ha.pid") is not None and self.pid("fake-vm.pid") is not None:
            return "Running"
        return "Stopped"

    def user_home(self) -> str:
        return f"/home/{guest_user()}.linux"

    def effective_config(self) -> dict[str, Any]:
        """lima.yaml with $LIMA_HOME/_config/{default,override}.yaml merged as Lima does."""
        config = self.config()
        layers = {}
        for layer in ("default", "override"):
            path = lima_home() / "_config" / f"{layer}.yaml"
            layers[layer] = load_yaml(path.read_text(), str(path)) if path.is_file() else {}
        provision = [
            *(layers["override"].get("provision") or []),
            *(config.get("provision") or []),
            *(layers["default"].get("provision") or []),
        ]
        merged = {**layers["default"], **config, **layers["override"], "provision": provision}
        merged["param"] = {
            **(layers["default"].get("param") or {}),
            **(config.get("param") or {}),
            **(layers["override"].get("param") or {}),
        }
        return merged

    def describe(self) -> dict[str, Any]:
        """One line of ``limactl list --json`` (pkg/limatype/lima_instance.go field names)."""
        status = self.status
        info: dict[str, Any] = {
            "name": self.name,
            "hostname": f"lima-{self.name}",
            "status": status,
            "dir": str(self.dir),
            "vmType": "qemu",
            "arch": os.uname().machine,
            "sshLocalPort": 0,
            "sshConfigFile": str(self.dir / "ssh.config"),
            "sshAddress": "127.0.0.1",
            "protected": (self.dir / "protected").exists(),
            "limaVersion": VERSION,
        }
        errors = self.errors()
        if errors:
            info["errors"] = errors
            return info
        config = self.config()
        info["vmType"] = config.get("vmType") or "qemu"
        info["cpus"] = int(config.get("cpus") or min(4, os.cpu_count() or 1))
        info["memory"] = parse_size(config.get("memory") or "4GiB")
        info["disk"] = parse_size(config.get("disk") or "100GiB")
        info["config"] = config
        if config.get("param"):
            info["param"] = config["param"]
        if status == "Running":
            info["hostAgentPID"] = self.pid("ha.pid")
            info["driverPID"] = self.pid("fake-vm.pid")
            info["sshLocalPort"] = 60000 + (info["driverPID"] or 0) % 5000
        return info

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "fake.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def instance_names() -> list[str]:
    home = lima_home()
    if not home.is_dir():
        return []
    return sorted(
        entry.name
        for entry in home.iterdir()
        if entry.is_dir() and not entry.name.startswith(("_", "."))
    )


def require(name: str) -> Instance:
    instance = Instance(name)
    if not instance.exists:
        fatal(f"instance {q(name)} does not exist, run `limactl create {name}` to create one")
    return instance


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


# -- the VM: a bubblewrap sandbox, entered with nsenter ------------------------------------------


def single_uid_reason() -> str | None:
    """Why this fake's VMs can hold only one uid (None: they have every uid, like a VM)."""
    if os.environ.get("FAKE_LIMACTL_SINGLE_UID") == "1":
        return "FAKE_LIMACTL_SINGLE_UID=1 asks fake-limactl for VMs that map a single uid"
    if os.geteuid() != 0:
        return (
            "fake-limactl runs unprivileged here, so its VM is a user namespace that maps a "
            "single uid: commands cannot run as a user apart from the agent (run it as root)"
        )
    return None


def vm_image(instance: Instance, full: bool) -> list[str]:
    """bwrap arguments for the "image": the host's, read-only, except a VM with every uid gets a
    writable /etc of its own (copied once), where users can be added as in a real VM."""
    # bwrap makes missing mount points root's and 0700; a VM's /var is for everyone to enter.
    for directory in ("var", "var/lib", "var/lib/dpkg"):
        (instance.disk / directory).mkdir(exist_ok=True)
        (instance.disk / directory).chmod(0o755)
    argv = []
    for entry in IMAGE_DIRS:
        source = Path("/") / entry
        if (instance.disk / entry).is_symlink():
            (instance.disk / entry).unlink()  # left by the last boot; bwrap makes it again
        if full and entry == "etc":
            if not (instance.disk / "etc").is_dir():
                subprocess.run(["cp", "-a", "/etc", str(instance.disk / "etc")], check=True)
            continue
        if source.is_symlink():
            argv += ["--symlink", os.readlink(source), str(source)]
        elif source.is_dir():
            argv += ["--ro-bind", str(source), str(source)]
    return argv


def vm_sandbox_argv(instance: Instance, info_fd: int, up_fd: int) -> list[str]:
    full = single_uid_reason() is None
    # As root, the VM has every uid and root's capabilities, like a VM's root (its own PID,
    # network, IPC and UTS namespaces, and its own mounts); else one uid, mapped to the caller.
    identity = ["--cap-add", "ALL"] if full else ["--unshare-user", "--uid", "0", "--gid", "0"]
    argv = [
        "bwrap",
        "--die-with-parent",
        *identity,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--bind",
        str(instance.disk),
        "/",
        *vm_image(instance, full),
    ]
    argv += [
        "--ro-bind-try",
        "/var/lib/dpkg",
        "/var/lib/dpkg",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind-try",
        "/sys",
        "/sys",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--hostname",
        f"lima-{instance.name}",
        "--info-fd",
        str(info_fd),
        "--",
        "/bin/sh",
        "-c",
        # The VM's init; it says "up" once the sandbox is set up (bwrap reports its pid earlier).
        f"echo up >&{up_fd}; exec sleep infinity {up_fd}>&-",
    ]
    return argv


def vm_environment(instance: Instance) -> dict[str, str]:
    user = guest_user()
    return {
        "PATH": VM_PATH,
        "HOME": instance.user_home(),
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
    }


def enter_vm_argv(instance: Instance, command: list[str], env: dict[str, str]) -> list[str]:
    vm_pid = instance.pid("fake-vm.pid")
    if vm_pid is None:
        stopped(instance.name)
    assignments = [f"{key}={value}" for key, value in env.items()]
    return [
        "nsenter",
        "-t",
        str(vm_pid),
        "-a",
        "-r",
        "-w",
        "--",
        "/usr/bin/env",
        "-i",
        *assignments,
        *command,
    ]


def expand_template(text: str, instance: Instance, config: dict[str, Any]) -> str:
    params = config.get("param") or {}
    values = {
        "User": guest_user(),
        "Home": instance.user_home(),
        "UID": "0",
        "Name": instance.name,
        "Hostname": f"lima-{instance.name}",
    }

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key.startswith("Param."):
            return str(params.get(key.removeprefix("Param."), "<no value>"))
        return values.get(key, match.group(0))

    return re.sub(r"\{\{\s*\.([A-Za-z][A-Za-z0-9_.]*)\s*\}\}", substitute, text)


def provision(instance: Instance, config: dict[str, Any]) -> None:
    """Boot: make the user's home, then run every provision entry in order, as cloud-init would."""
    env = vm_environment(instance)
    env.update({f"PARAM_{key}": str(value) for key, value in (config.get("param") or {}).items()})
    env.update(
        {
            "LIMA_CIDATA_USER": guest_user(),
            "LIMA_CIDATA_UID": "0",
            "LIMA_CIDATA_NAME": instance.name,
        }
    )
    boot = f"mkdir -p {shlex.quote(instance.user_home())} /var/lib/fake-lima/provision"
    run_in_vm(instance, ["/bin/sh", "-c", boot], env, "boot")
    for number, entry in enumerate(config.get("provision") or []):
        mode = entry.get("mode", "system")
        if mode == "data":
            path = expand_template(entry["path"], instance, config)
            content = expand_template(entry.get("content", ""), instance, config)
            permissions = str(entry.get("permissions", "644"))
            script = (
                'if [ "$3" = false ] && [ -e "$1" ]; then exit 0; fi; '
                'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
            )
            overwrite = "false" if entry.get("overwrite") is False else "true"
            run_in_vm(
                instance,
                ["/bin/sh", "-c", script, "sh", path, permissions, overwrite],
                env,
                f"provision data {path}",
                stdin=content.encode(),
            )
        elif mode in ("system", "user", "boot", "dependency"):
            script = expand_template(entry.get("script", ""), instance, config)
            target = f"/var/lib/fake-lima/provision/{number:02d}-{mode}"
            install = f"cat > {target} && chmod 755 {target}"
            run_in_vm(instance, ["/bin/sh", "-c", install], env, "install", stdin=script.encode())
            runner = [target] if script.startswith("#!") else ["/bin/sh", target]
            run_in_vm(instance, runner, env, f"provision {mode} script {number}")
        else:
            fatal(f"the fake limactl does not run provision mode {mode!r}")


def run_in_vm(
    instance: Instance, command: list[str], env: dict[str, str], what: str, stdin: bytes = b""
) -> None:
    result = subprocess.run(
        enter_vm_argv(instance, command, env), input=stdin, capture_output=True, check=False
    )
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    if output:
        sys.stderr.write(f"[{what}] {output}\n")
    if result.returncode != 0:
        raise Fatal(f"{what} failed with exit status {result.returncode}: {output[-2000:]}")


def hostagent(args: list[str]) -> int:
    """The VM's supervisor: runs the sandbox, boots it, reports on --ready-fd, waits for stop."""
    flags, positionals = parse_flags(args, {"ready-fd": "str"})
    instance = require(positionals[0])
    ready = os.fdopen(int(flags["ready-fd"]), "w")
    instance.disk.mkdir(exist_ok=True)
    info_read, info_write = os.pipe()
    up_read, up_write = os.pipe()
    vm = subprocess.Popen(
        vm_sandbox_argv(instance, info_write, up_write),
        pass_fds=(info_write, up_write),
        stdin=subprocess.DEVNULL,
    )
    os.close(info_write)
    os.close(up_write)
    with os.fdopen(info_read) as info_file, os.fdopen(up_read) as up_file:
        info_text = info_file.read()
        up = up_file.readline()
    if not info_text or not up:
        ready.write(f"error: the VM sandbox did not start (bwrap exit status {vm.wait()})\n")
        return 1
    write_atomically(instance.dir / "fake-vm.pid", str(json.loads(info_text)["child-pid"]))
    write_atomically(instance.dir / "ha.pid", str(os.getpid()))

    def stop(signum: int, frame: object) -> None:
        vm.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        provision(instance, instance.effective_config())
    except Fatal as err:
        sys.stderr.write(f"provisioning failed: {err}\n")
        ready.write(f"degraded: {err}\n")
    else:
        ready.write("ready\n")
    ready.close()
    vm.wait()
    for name in ("fake-vm.pid", "ha.pid"):
        (instance.dir / name).unlink(missing_ok=True)
    return 0


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def boot(instance: Instance, timeout: float) -> None:
    if shutil.which("bwrap") is None or shutil.which("nsenter") is None:
        fatal(
            "the fake limactl needs bubblewrap and nsenter (apt-get install bubblewrap util-linux)"
        )
    Log.info(f'Starting the instance {q(instance.name)} with VM driver "qemu"')
    for stale in ("ha.pid", "fake-vm.pid"):
        (instance.dir / stale).unlink(missing_ok=True)
    ready_read, ready_write = os.pipe()
    with (
        (instance.dir / "ha.stdout.log").open("ab") as out,
        (instance.dir / "ha.stderr.log").open("ab") as err,
    ):
        subprocess.Popen(
            [
                sys.executable,
                os.path.realpath(sys.argv[0]),
                "hostagent",
                instance.name,
                "--ready-fd",
                str(ready_write),
            ],
            pass_fds=(ready_write,),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    os.close(ready_write)
    Log.info('[hostagent] Waiting for the essential requirement 1 of 2: "ssh"')
    readable, _, _ = select.select([ready_read], [], [], timeout)
    if not readable:
        os.close(ready_read)
        fatal('did not receive an event with the "running" status')
    with os.fdopen(ready_read) as ready:
        report = ready.read().strip()
    if report != "ready":
        fatal(report or "the host agent exited before the instance was ready; see ha.stderr.log")
    Log.info("READY. Run `limactl shell " + instance.name + "` to open the shell.")


def force_stop(instance: Instance) -> None:
    for name, sig in (("fake-vm.pid", signal.SIGKILL), ("ha.pid", signal.SIGKILL)):
        pid = instance.pid(name)
        if pid is not None:
            Log.info(f"Sending SIGKILL to process {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            wait_gone(pid, 10)
    for path in instance.dir.glob("*"):
        if path.suffix in (".pid", ".sock", ".tmp"):
            path.unlink(missing_ok=True)


# -- commands ------------------------------------------------------------------------------------

EDIT_FLAGS = {
    "cpus": "str",
    "memory": "str",
    "disk": "str",
    "vm-type": "str",
    "arch": "str",
    "set": "list",
    "plain": "bool",
    "containerd": "str",
    "mount-none": "bool",
    "mount": "list",
    "network": "list",
    "param": "list",
}


def template_config(locator: str) -> tuple[dict[str, Any], str]:
    """The config a create argument names, and the instance name it implies."""
    if locator == "-":
        return load_yaml(sys.stdin.read(), "stdin"), ""
    if locator.startswith("template:"):
        name = locator.removeprefix("template:").removeprefix("//")
        if name not in TEMPLATES:
            fatal(f"template {q(name)} not found")
        return json.loads(json.dumps(TEMPLATES[name])), name
    path = Path(locator)
    if not path.is_file():
        fatal(f"open {locator}: no such file or directory")
    return load_yaml(path.read_text(), locator), path.stem


def create_instance(name: str, config: dict[str, Any], flags: dict[str, Any]) -> Instance:
    if not NAME_PATTERN.match(name) or len(name) > 76:
        fatal(f"instance name {q(name)} is invalid")
    instance = Instance(name)
    socket = instance.dir / LONGEST_SOCK
    if len(str(socket)) >= UNIX_PATH_MAX:
        fatal(
            f"instance name {q(name)} too long: {q(str(socket))} must be less than "
            f"UNIX_PATH_MAX={UNIX_PATH_MAX} characters, but is {len(str(socket))}"
        )
    if instance.exists:
        fatal(f"instance {q(name)} already exists ({q(str(instance.dir))})")
    apply_edit_flags(config, flags)
    check_params(config)
    instance.dir.mkdir(parents=True)
    (instance.dir / "lima.yaml").write_text(json.dumps(config, indent=2) + "\n")
    (instance.dir / "lima-version").write_text(VERSION)
    instance.disk.mkdir()
    Log.info(f"Attempting to create instance {q(name)} (VM type qemu)")
    return instance


def cmd_create(args: list[str]) -> int:
    flags, positionals = parse_flags(args, {"name": "str", **EDIT_FLAGS})
    config, implied = template_config(positionals[0] if positionals else "template:default")
    name = flags.get("name") or implied
    if positionals and positionals[0] == "-" and not flags.get("name"):
        fatal("`limactl create` with stdin needs --name")
    create_instance(name, config, flags)
    Log.info(f"Run `limactl start {name}` to start the instance.")
    return 0


def cmd_start(args: list[str]) -> int:
    flags, positionals = parse_flags(
        args,
        {"name": "str", "timeout": "str", "progress": "bool", "foreground": "bool", **EDIT_FLAGS},
    )
    timeout = parse_duration(flags.get("timeout", "10m"))
    target = positionals[0] if positionals else "default"
    instance = Instance(flags.get("name") or target)
    if not instance.exists:
        if positionals and (
            target.startswith("template:") or Path(target).is_file() or target == "-"
        ):
            config, implied = template_config(target)
            instance = create_instance(flags.get("name") or implied, config, flags)
        else:
            # Lima 2.x still accepts this deprecated form: a missing name means "create it".
            Log.warn(
                f"Creating an instance {q(instance.name)} from template://default "
                f"(Not from template://{instance.name})"
            )
            Log.warn(
                "This form is deprecated. Use `limactl create --name=NAME template:default` first"
            )
            instance = create_instance(instance.name, template_config("template:default")[0], flags)
    with instance.locked():
        status = instance.status
        if status == "Broken":
            fatal(f"instance {q(instance.name)} is broken: {instance.errors()}")
        if status == "Running":
            Log.info(f"The instance {q(instance.name)} is already running.")
            return 0
        boot(instance, timeout)
    return 0


def cmd_stop(args: list[str]) -> int:
    flags, positionals = parse_flags(args, {"force": "bool"})
    instance = require(positionals[0] if positionals else "default")
    with instance.locked():
        if flags.get("force"):
            force_stop(instance)
            return 0
        status = instance.status
        if status != "Running":
            fatal(f'expected status "Running", got {q(status)} (maybe use `limactl stop -f`?)')
        pid = instance.pid("ha.pid")
        assert pid is not None
        Log.info(f"Sending SIGINT to hostagent process {pid}")
        os.kill(pid, signal.SIGINT)
        Log.info("Waiting for the host agent and the driver processes to shut down")
        if not wait_gone(pid, 190):
            fatal('did not receive an event with the "exiting" status')
    return 0


def cmd_delete(args: list[str]) -> int:
    flags, positionals = parse_flags(args, {"force": "bool"})
    for name in positionals or ["default"]:
        instance = Instance(name)
        if not instance.exists:
            Log.warn(f"Ignoring non-existent instance {q(name)}")
            continue
        if (instance.dir / "protected").exists():
            fatal(f"instance {q(name)} is protected (Hint: use `limactl unprotect`)")
        with instance.locked():
            if instance.status == "Running":
                if not flags.get("force"):
                    fatal(f'expected status "Stopped", got "Running" for {q(name)} (try --force)')
                force_stop(instance)
            # rm, not shutil.rmtree: a workspace may hold a tree deeper than Python recurses.
            subprocess.run(["rm", "-rf", "--", str(instance.dir)], check=True)
        Log.info(f"Deleted {q(name)} ({q(str(instance.dir))})")
    return 0


def cmd_edit(args: list[str]) -> int:
    flags, positionals = parse_flags(args, {**EDIT_FLAGS, "start": "bool"})
    instance = require(positionals[0] if positionals else "default")
    with instance.locked():
        if instance.status == "Running":
            fatal(f"cannot edit a running instance {q(instance.name)}; stop it first")
        config = instance.config()
        before = parse_size(config.get("disk") or "100GiB")
        apply_edit_flags(config, flags)
        if parse_size(config.get("disk") or "100GiB") < before:
            fatal("the disk size cannot be reduced")
        check_params(config)
        write_atomically(instance.yaml_path, json.dumps(config, indent=2) + "\n")
    Log.info(f"Instance {q(instance.name)} configuration edited")
    return 0


def cmd_list(args: list[str]) -> int:
    flags, positionals = parse_flags(
        args, {"json": "bool", "format": "str", "quiet": "bool", "all-fields": "bool"}
    )
    names = instance_names()
    if not names:
        Log.warn("No instance found. Run `limactl create` to create an instance.")
        return 0
    selected = []
    unmatched = []
    for name in positionals or names:
        (selected if name in names else unmatched).append(name)
    for name in unmatched:
        Log.warn(f"No instance matching {name} found.")
    output_format = "json" if flags.get("json") else flags.get("format", "table")
    for name in selected:
        if flags.get("quiet"):
            print(name)
        elif output_format == "json":
            print(json.dumps(Instance(name).describe(), separators=(",", ":")))
        else:
            info = Instance(name).describe()
            print(f"{name}\t{info['status']}\t{info['dir']}")
    if unmatched:
        fatal(f"unmatched instances: {', '.join(unmatched)}")
    return 0


def cmd_shell(args: list[str]) -> int:
    flags, positionals = parse_flags(
        args,
        {
            "workdir": "str",
            "shell": "str",
            "start": "bool",
            "reconnect": "bool",
            "preserve-env": "bool",
            "sync": "str",
        },
        interspersed=False,
    )
    if not positionals:
        fatal('"limactl shell" requires at least 1 argument')
    name, command = positionals[0], positionals[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    instance = require(name)
    if instance.status != "Running":
        if not flags.get("start"):
            stopped(name)
        cmd_start([name])
    workdir = flags.get("workdir")
    change_dir = f"cd {shlex.quote(workdir)} || exit 1" if workdir else "false"
    shell = shlex.quote(flags["shell"]) if flags.get("shell") else '"$SHELL"'
    script = f"{change_dir} ; exec {shell} --login"
    if command:
        script += " -c " + shlex.quote(" ".join(shlex.quote(part) for part in command))
    # sshd starts the session in the user's home and runs the command with the login shell.
    session = f'cd "$HOME" 2>/dev/null; {script}'
    argv = enter_vm_argv(instance, ["/bin/bash", "-c", session], vm_environment(instance))
    child = subprocess.Popen(argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: child.send_signal(number))
    code = child.wait()
    if code < 0 or instance.pid("fake-vm.pid") is None:
        # The VM went away under the session: ssh reports a dropped connection as 255.
        sys.stderr.write("Connection to 127.0.0.1 closed by remote host.\n")
        return 255
    return code


def split_copy_path(path: str) -> tuple[Instance | None, str]:
    head, colon, tail = path.partition(":")
    if colon and "/" not in head and head:
        return require(head), tail
    return None, path


def cmd_copy(args: list[str]) -> int:
    flags, positionals = parse_flags(
        args, {"recursive": "bool", "verbose": "bool", "backend": "str"}
    )
    if len(positionals) < 2:
        fatal('"limactl copy" requires at least 2 arguments')
    target_instance, target = split_copy_path(positionals[-1])
    for source in positionals[:-1]:
        source_instance, source_path = split_copy_path(source)
        if (source_instance is None) == (target_instance is None):
            fatal("exactly one of the source and the target must be in an instance (INSTANCE:PATH)")
        instance = source_instance or target_instance
        assert instance is not None
        if instance.status != "Running":
            stopped(instance.name)
        env = vm_environment(instance)
        home = 'cd "$HOME" || exit 1; '
        if target_instance is not None:
            local = Path(source_path)
            if local.is_dir():
                if not flags.get("recursive"):
                    fatal(f"scp: {local}: not a regular file (use -r)")
                script = home + 'mkdir -p "$1" && tar -C "$1" -xf -'
                data = subprocess.run(
                    ["tar", "-C", str(local), "-cf", "-", "."], capture_output=True, check=True
                ).stdout
            else:
                script = home + 'if [ -d "$1" ]; then t="$1/$2"; else t="$1"; fi; cat > "$t"'
                try:
                    data = local.read_bytes()
                except OSError as err:
                    fatal(f"scp: {local}: {err.strerror}")
            result = subprocess.run(
                enter_vm_argv(instance, ["/bin/sh", "-c", script, "sh", target, local.name], env),
                input=data,
                capture_output=True,
                check=False,
            )
        else:
            result = subprocess.run(
                enter_vm_argv(
                    instance, ["/bin/sh", "-c", home + 'cat "$1"', "sh", source_path], env
                ),
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:
                destination = Path(target)
                if destination.is_dir():
                    destination /= Path(source_path).name
                destination.write_bytes(result.stdout)
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip()
            fatal(f"scp: {detail} (exit status {result.returncode})")
    return 0


def cmd_info(args: list[str]) -> int:
    parse_flags(args, {})
    print(
        json.dumps(
            {
                "version": VERSION,
                "limaHome": str(lima_home()),
                "vmTypes": ["qemu"],
                "hostOS": sys.platform,
                "hostArch": os.uname().machine,
                "defaultTemplate": DEFAULT_TEMPLATE,
            }
        )
    )
    return 0


COMMANDS = {
    "create": cmd_create,
    "start": cmd_start,
    "stop": cmd_stop,
    "delete": cmd_delete,
    "rm": cmd_delete,
    "edit": cmd_edit,
    "list": cmd_list,
    "ls": cmd_list,
    "shell": cmd_shell,
    "copy": cmd_copy,
    "cp": cmd_copy,
    "info": cmd_info,
    "hostagent": hostagent,
}


def record_call(args: list[str]) -> None:
    log_dir = lima_home() / "_fake"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "calls.jsonl").open("a") as handle:
            handle.write(json.dumps({"argv": args, "time": time.time()}) + "\n")
    except OSError:
        pass


def main(args: list[str]) -> int:
    record_call(args)
    try:
        index = 0  # global flags come before the command
        while index < len(args) and args[index].startswith("-"):
            name = args[index].lstrip("-")
            index += 2 if GLOBAL_FLAGS.get(name) == "str" else 1
        flags, _ = parse_flags(args[:index], {"version": "bool"})
        if flags.get("version") or args[index : index + 1] == ["version"]:
            print(f"limactl version {VERSION}")
            return 0
        if index == len(args):
            print("Usage: limactl [command] (fake-limactl: see fake_limactl.py)")
            return 0
        if os.environ.get("FAKE_LIMACTL_AS_ROOT") == "1":
            fatal("must not run as the root user")
        command, command_args = args[index], args[index + 1 :]
        handler = COMMANDS.get(command)
        if handler is None:
            sys.stderr.write(f'Error: unknown command "{command}" for "limactl"\n')
            return 1
        return handler(command_args)
    except Fatal as err:
        Log.emit("fatal", str(err))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
