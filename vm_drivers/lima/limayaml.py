"""The ``lima.yaml`` of a per-project instance, generated from the project's spec.

What it asks of Lima:

- the image from a base template (``template:_images/debian-12`` by default, or the project's
  own ``image``), with CPUs, memory and disk from the spec or the project type's defaults;
- **no host mounts** (``mounts: []``) and ``plain: true``, which also ignores mounts and port
  forwards from ``$LIMA_HOME/_config/default.yaml``, turns off containerd and Lima's own guest
  agent: nothing of the host is visible in the VM, and no guest port appears on the host;
- ``/workspace`` **on the VM's own disk**: it survives stop and start, ``limactl delete``
  removes it with the instance, and the disk grows with ``limactl edit --disk`` (a separate Lima
  disk would survive deletion, which is not what destroying a project VM means);
- a provisioning script, run on every boot, that installs missing packages, makes the command
  user (``COMMAND_USER``: unprivileged, no sudo; every command runs as it), makes
  ``/opt/projectvm`` root's (the agent runs as root and its code lives there) and a new
  ``/workspace`` the command user's, and applies the network setting;
- the labels as a ``param`` (so ``limactl list --json`` reports them) and as
  ``/opt/projectvm/labels.json`` inside the VM.

Lima has no "no network" setting: its user-mode network carries ssh, which ``limactl shell`` and
``limactl copy`` need. ``network: none`` is therefore a firewall in the guest: outgoing traffic
is rejected except on loopback and for connections that came in (ssh). It holds against
commands: they run as the command user, who has no sudo and cannot change the rules (Lima's own
user, who has passwordless sudo, is the driver's, not the commands'). Whoever can run
``limactl shell`` on the host can still lift it.

The file is written in YAML's JSON form, which every YAML reader accepts, so scripts keep their
exact bytes without a YAML library; the comment at the top says what it is and whose it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vm_drivers.base import VMSpec
from vm_drivers.config import LimaTemplate
from vm_drivers.lima.guest import COMMAND_USER

__all__ = [
    "AGENT_DIR",
    "COMMAND_USER",
    "LABELS_FILE",
    "PARAM_LABELS",
    "PARAM_NETWORK",
    "WORKSPACE",
    "Resources",
    "lima_config",
    "provision_script",
    "render_lima_yaml",
    "resources",
]

WORKSPACE = "/workspace"
AGENT_DIR = "/opt/projectvm"
LABELS_FILE = f"{AGENT_DIR}/labels.json"
PARAM_LABELS = "ProjectvmLabels"
PARAM_NETWORK = "ProjectvmNetwork"
MINIMUM_LIMA_VERSION = "2.0.0"
FIREWALL_CHAIN = "PROJECTVM-OUT"
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")


@dataclass(frozen=True)
class Resources:
    """CPUs and sizes as Lima takes them."""

    cpus: int
    memory_mib: int
    disk_gib: float

    @property
    def memory(self) -> str:
        if self.memory_mib % 1024 == 0:
            return f"{self.memory_mib // 1024}GiB"
        return f"{self.memory_mib}MiB"

    @property
    def disk(self) -> str:
        return f"{self.disk_gib:g}GiB"

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    @property
    def disk_bytes(self) -> int:
        return int(self.disk_gib * (1 << 30))


def resources(spec: VMSpec, template: LimaTemplate) -> Resources:
    """The spec's limits where it sets them, else the project type's (a VM has whole CPUs)."""
    return Resources(
        cpus=max(1, math.ceil(spec.cpus)) if spec.cpus else template.cpus,
        memory_mib=spec.memory_mb or round(template.memory_gib * 1024),
        disk_gib=spec.disk_gb or template.disk_gib,
    )


def provision_script(packages: list[str]) -> str:
    """The boot-time script (system mode): packages, directories, network. Idempotent."""
    wanted = sorted({*packages, "iptables"})
    for package in wanted:
        if not _PACKAGE_NAME.match(package):
            raise ValueError(f"{package!r} is not a package name")
    lines = [
        "#!/bin/sh",
        "# ProjectVM: packages, workspace and network policy. Runs on every boot.",
        "set -eu",
        f'network="{{{{.Param.{PARAM_NETWORK}}}}}"',
        f'packages="{" ".join(wanted)}"',
        'missing=""',
        "if command -v dpkg-query >/dev/null 2>&1; then",
        "  for p in $packages; do",
        "    dpkg-query -W -f='${Status}' \"$p\" 2>/dev/null | grep -q 'ok installed' \\",
        '      || missing="$missing $p"',
        "  done",
        '  if [ -n "$missing" ]; then',
        "    export DEBIAN_FRONTEND=noninteractive",
        "    apt-get update -q",
        "    apt-get install -y -q --no-install-recommends $missing",
        "  fi",
        "elif command -v rpm >/dev/null 2>&1; then",
        '  for p in $packages; do rpm -q "$p" >/dev/null 2>&1 || missing="$missing $p"; done',
        '  if [ -n "$missing" ]; then dnf install -y $missing; fi',
        "else",
        '  echo "projectvm: no apt or dnf here; install $packages in the image" >&2',
        "  exit 1",
        "fi",
        "# Commands run as an unprivileged user without sudo; the agent (root's) lives apart.",
        "# Only where one uid is mapped (a container, not a VM) is there no such user to make.",
        "uids=0",
        "while read -r inside outside count; do uids=$((uids + count)); done < /proc/self/uid_map",
        'if [ "$uids" -gt 1 ]; then',
        f"  id -u {COMMAND_USER} >/dev/null 2>&1 || useradd --system --user-group \\",
        f"    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {COMMAND_USER}",
        f"  owner={COMMAND_USER}",
        "else",
        '  echo "projectvm: one uid here: commands cannot run apart from the agent" >&2',
        "  owner=0",
        "fi",
        f"install -d -m 0755 -o root -g root {AGENT_DIR}",
        "# An existing workspace is left as it is: the agent hands it over to the command user.",
        f'[ -d {WORKSPACE} ] || install -d -m 0755 -o "$owner" -g "$owner" {WORKSPACE}',
        "# network: none rejects what leaves the VM, except loopback and answers (ssh).",
        "for ipt in iptables ip6tables; do",
        f"  $ipt -w -N {FIREWALL_CHAIN} 2>/dev/null || $ipt -w -F {FIREWALL_CHAIN}",
        f"  $ipt -w -C OUTPUT -j {FIREWALL_CHAIN} 2>/dev/null \\",
        f"    || $ipt -w -I OUTPUT 1 -j {FIREWALL_CHAIN}",
        '  if [ "$network" = none ]; then',
        f"    $ipt -w -A {FIREWALL_CHAIN} -o lo -j RETURN",
        f"    $ipt -w -A {FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"    $ipt -w -A {FIREWALL_CHAIN} -j REJECT",
        "  fi",
        "done",
    ]
    return "\n".join(lines) + "\n"


def lima_config(
    spec: VMSpec,
    template: LimaTemplate,
    *,
    labels: Mapping[str, str],
    vm_type: str | None = None,
) -> dict[str, Any]:
    """The instance's configuration as a mapping (what ``render_lima_yaml`` writes)."""
    wanted = resources(spec, template)
    config: dict[str, Any] = {
        "minimumLimaVersion": MINIMUM_LIMA_VERSION,
        "base": [spec.image or template.base],
    }
    if vm_type:
        config["vmType"] = vm_type
    config |= {
        "cpus": wanted.cpus,
        "memory": wanted.memory,
        "disk": wanted.disk,
        "plain": True,
        "mounts": [],
        "containerd": {"system": False, "user": False},
        "ssh": {"localPort": 0, "loadDotSSHPubKeys": False, "forwardAgent": False},
        "param": {
            PARAM_LABELS: json.dumps(dict(sorted(labels.items())), separators=(",", ":")),
            PARAM_NETWORK: spec.network,
        },
        "provision": [
            {
                "mode": "data",
                "path": LABELS_FILE,
                "content": f"{{{{.Param.{PARAM_LABELS}}}}}\n",
                "permissions": "644",
            },
            {"mode": "system", "script": provision_script(template.packages)},
        ],
    }
    return config


def render_lima_yaml(
    spec: VMSpec,
    template: LimaTemplate,
    *,
    vm_id: str,
    labels: Mapping[str, str],
    vm_type: str | None = None,
) -> str:
    header = [
        f"# lima.yaml of ProjectVM VM {vm_id} (project {spec.project_id}), written by the",
        "# lima driver; `limactl edit` changes its resources. Labels, for gc and reconciliation:",
        *(f"#   {key}={json.dumps(value)}" for key, value in sorted(labels.items())),
    ]
    body = json.dumps(lima_config(spec, template, labels=labels, vm_type=vm_type), indent=2)
    return "\n".join(header) + "\n" + body + "\n"
