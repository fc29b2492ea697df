"""``limactl``, Lima's command line, as async calls; its failures become driver errors here.

Every call runs ``limactl --tty=false --log-format=json ...`` as a subprocess with stdin closed
(``limactl shell`` would otherwise swallow ours) and a deadline. With JSON logs, each stderr line
is an object whose ``msg`` a fatal line carries the reason, so failures are parsed, not guessed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vm_drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverTimeout,
    DriverUnavailable,
    GuestUnreachable,
    VMCreationFailed,
    VMNotFound,
    VMOperationFailed,
    VMResourceExhausted,
)

__all__ = [
    "FAILURE_TRANSLATIONS",
    "INSTALL_HINT",
    "MINIMUM_MAJOR_VERSION",
    "LimaInstance",
    "Limactl",
    "LimactlFailure",
    "parse_version",
    "translate_failure",
]

MINIMUM_MAJOR_VERSION = 2
INSTALL_HINT = (
    "install Lima 2.x (macOS: `brew install lima`; Linux: the release tarball from the Lima "
    "project, plus qemu-system and qemu-img) or set the lima driver's limactl option"
)
# What to match in limactl's message, what it means, and what the user can do about it. The
# first match wins; anything unmatched is a VMOperationFailed carrying limactl's own words.
FAILURE_TRANSLATIONS: list[tuple[str, type[DriverError], str]] = [
    (
        r"must not run as the root user",
        DriverUnavailable,
        "limactl refuses to run as root: run ProjectVM as a normal user",
    ),
    (
        r"too long|UNIX_PATH_MAX",
        DriverConfigError,
        "shorten LIMA_HOME (the lima driver's lima_home option) or the instance prefix",
    ),
    (
        r"does not exist|No instance matching|not found|no such instance",
        VMNotFound,
        "the Lima instance is gone; destroy the project VM and create it again",
    ),
    (
        r"already exists",
        VMCreationFailed,
        "an instance of that name exists: delete it (`limactl delete -f NAME`) if it is a stray",
    ),
    (
        r"did not receive an event|timed out|timeout|deadline exceeded",
        DriverTimeout,
        "the VM did not come up in time; look at ha.stderr.log in the instance directory",
    ),
    (
        r"no space left|insufficient memory|cannot allocate memory|disk quota",
        VMResourceExhausted,
        "free disk space or memory on the host, or lower the project's limits",
    ),
    (
        r"is stopped|expected status",
        VMOperationFailed,
        "the instance is not in the state the call needs; check `limactl list`",
    ),
    (
        r"degraded|provision",
        VMOperationFailed,
        "provisioning failed inside the VM; see ha.stderr.log and /var/log/cloud-init-output.log",
    ),
]
# ssh's exit status for a failed connection; `limactl shell` passes it through.
SSH_FAILED = 255


class LimaInstance(BaseModel):
    """The fields of one ``limactl list --json`` line the driver reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    status: str = ""
    dir: str = ""
    vm_type: str = Field(default="", alias="vmType")
    arch: str = ""
    cpus: int = 0
    memory: int = 0
    disk: int = 0
    message: str = ""
    errors: list[str] | None = None
    param: dict[str, str] | None = None
    lima_version: str = Field(default="", alias="limaVersion")


@dataclass(frozen=True)
class LimactlFailure:
    """A limactl call that exited non-zero: its argv, status and what it said."""

    argv: Sequence[str]
    returncode: int
    message: str

    def __str__(self) -> str:
        command = " ".join([arg for arg in self.argv[1:] if not arg.startswith("--")][:2])
        return f"`limactl {command}` exited with status {self.returncode}: {self.message}"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``limactl version 2.2.0`` (or ``v2.0.0-beta.1``, ``2.1.0-12-gabc``) to (2, 2, 0)."""
    match = re.search(r"\bv?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def translate_failure(failure: LimactlFailure, action: str) -> DriverError | GuestUnreachable:
    """The driver error for a failed limactl call made while doing ``action``."""
    for pattern, kind, hint in FAILURE_TRANSLATIONS:
        if re.search(pattern, failure.message, re.IGNORECASE):
            if kind is DriverUnavailable:
                return DriverUnavailable("lima", failure.message, hint)
            return kind(f"{action} failed: {failure}; {hint}")
    if failure.returncode == SSH_FAILED:
        return GuestUnreachable(
            f"{action} failed: the ssh connection to the instance broke ({failure.message}); "
            "retry, or `limactl shell --reconnect NAME true` to reset it"
        )
    return VMOperationFailed(f"{action} failed: {failure}; check `limactl list` and the logs")


def _messages(stderr: bytes) -> str:
    """What limactl said, preferring its error and fatal log lines."""
    text = stderr.decode(errors="replace")
    errors: list[str] = []
    others: list[str] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "msg" in entry:
            message = str(entry["msg"])
            if entry.get("errors"):
                message += f" ({entry['errors']})"
            level = str(entry.get("level", ""))
            (errors if level in ("error", "fatal", "panic") else others).append(message)
        elif line.strip():
            errors.append(line.strip())
    chosen = errors or others[-3:]
    return "; ".join(chosen)[-2000:] or "(no message)"


class Limactl:
    """One ``limactl`` executable and the ``LIMA_HOME`` it works in."""

    def __init__(
        self,
        executable: str,
        lima_home: Path | None = None,
        *,
        timeout_s: float = 60,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.executable = executable
        self.lima_home = lima_home
        self.timeout_s = timeout_s
        self._environment = environment
        self._path: str | None = None

    def path(self) -> str:
        """The resolved executable; raises DriverUnavailable when there is none."""
        if self._path is None:
            found = shutil.which(self.executable)
            if found is None:
                raise DriverUnavailable(
                    "lima", f"limactl was not found (looked for {self.executable!r})", INSTALL_HINT
                )
            self._path = found
        return self._path

    def environment(self) -> dict[str, str]:
        env = dict(self._environment if self._environment is not None else os.environ)
        if self.lima_home is not None:
            env["LIMA_HOME"] = str(self.lima_home)
        return env

    def argv(self, *args: str) -> list[str]:
        return [self.path(), "--tty=false", "--log-format=json", *args]

    async def _execute(
        self, argv: list[str], timeout_s: float, what: str
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            with anyio.fail_after(timeout_s):
                return await anyio.run_process(
                    argv, stdin=subprocess.DEVNULL, check=False, env=self.environment()
                )
        except TimeoutError:
            raise DriverTimeout(
                f"{what} failed: `limactl {argv[3]}` did not finish within {timeout_s:g}s; the "
                "instance may be stuck (`limactl stop -f NAME` resets it)"
            ) from None
        except OSError as err:
            raise DriverUnavailable(
                "lima", f"could not run {argv[0]} ({err})", INSTALL_HINT
            ) from err

    async def run(self, *args: str, timeout_s: float | None = None, action: str) -> bytes:
        """Run one command; its stdout, or the translated error when it fails."""
        argv = self.argv(*args)
        result = await self._execute(argv, timeout_s or self.timeout_s, action)
        if result.returncode != 0:
            failure = LimactlFailure(argv, result.returncode, _messages(result.stderr))
            raise translate_failure(failure, action)
        return result.stdout

    async def version(self) -> tuple[tuple[int, int, int], str]:
        """The version limactl reports, parsed and as printed."""
        output = await self.run("--version", action="asking limactl its version")
        text = output.decode(errors="replace").strip()
        parsed = parse_version(text)
        if parsed is None:
            raise DriverUnavailable(
                "lima", f"could not read the version limactl printed ({text!r})", INSTALL_HINT
            )
        return parsed, text

    async def info(self) -> dict[str, Any]:
        output = await self.run("info", action="asking limactl about this host")
        try:
            info = json.loads(output)
        except ValueError as err:
            raise DriverUnavailable(
                "lima", f"`limactl info` printed something that is not JSON ({err})", INSTALL_HINT
            ) from err
        if not isinstance(info, dict):
            raise DriverUnavailable("lima", "`limactl info` printed no JSON object", INSTALL_HINT)
        return info

    async def list(self, *names: str) -> dict[str, LimaInstance]:
        """Instances by name. Missing names are simply absent: Lima warns and exits 1 for them,
        or prints nothing and exits 0 when there are no instances at all."""
        argv = self.argv("list", "--json", *names)
        result = await self._execute(argv, self.timeout_s, "listing Lima instances")
        found = self._parse_list(result.stdout)
        if result.returncode != 0:
            message = _messages(result.stderr)
            unmatched = re.search(r"No instance matching|unmatched instance", message, re.I)
            if not (names and unmatched):
                failure = LimactlFailure(argv, result.returncode, message)
                raise translate_failure(failure, "listing Lima instances")
        return found

    @staticmethod
    def _parse_list(stdout: bytes) -> dict[str, LimaInstance]:
        found: dict[str, LimaInstance] = {}
        for line in stdout.decode(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                instance = LimaInstance.model_validate_json(line)
            except ValidationError as err:
                raise VMOperationFailed(
                    f"`limactl list --json` printed a line this driver cannot read ({err}): "
                    f"{line[:200]!r}; is this Lima 2.x?"
                ) from err
            found[instance.name] = instance
        return found

    async def instance(self, name: str) -> LimaInstance | None:
        return (await self.list(name)).get(name)
