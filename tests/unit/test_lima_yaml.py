"""The lima.yaml the lima driver generates for a per-project instance."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from vm_drivers.base import VMSpec
from vm_drivers.config import LimaDriverConfig, LimaTemplate
from vm_drivers.lima.limayaml import (
    AGENT_DIR,
    COMMAND_USER,
    LABELS_FILE,
    PARAM_LABELS,
    PARAM_NETWORK,
    lima_config,
    provision_script,
    render_lima_yaml,
    resources,
)

LABELS = {"projectvm.project": "prj_a", "projectvm.vm": "pvm-prj_a", "projectvm.instance": "i1"}


def rendered(spec: VMSpec, template: LimaTemplate | None = None, **options: Any) -> dict[str, Any]:
    text = render_lima_yaml(
        spec, template or LimaTemplate(), vm_id="pvm-prj_a", labels=LABELS, **options
    )
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    config: dict[str, Any] = json.loads(body)  # YAML's JSON form: any YAML reader takes it
    return config


def test_the_instance_has_no_host_mounts_and_runs_plain() -> None:
    config = rendered(VMSpec(project_id="prj_a", name="a"))
    assert config["mounts"] == []
    assert config["plain"] is True
    assert config["containerd"] == {"system": False, "user": False}
    assert config["ssh"]["localPort"] == 0
    assert config["minimumLimaVersion"] == "2.0.0"
    assert config["base"] == ["template:_images/debian-12"]
    assert "vmType" not in config


@pytest.mark.parametrize(
    ("project_type", "cpus", "memory", "disk"),
    [
        ("development", 2, "4GiB", "50GiB"),
        ("analysis", 2, "4GiB", "50GiB"),
        ("sandbox", 1, "1GiB", "20GiB"),
        ("unknown-type", 2, "4GiB", "50GiB"),
    ],
)
def test_resources_default_per_project_type(
    project_type: str, cpus: int, memory: str, disk: str
) -> None:
    templates = LimaDriverConfig().templates
    template = templates.get(project_type) or templates["development"]
    config = rendered(VMSpec(project_id="p", name="a", project_type=project_type), template)
    assert (config["cpus"], config["memory"], config["disk"]) == (cpus, memory, disk)


def test_the_spec_overrides_the_defaults_and_cpus_round_up() -> None:
    spec = VMSpec(
        project_id="p", name="a", cpus=1.5, memory_mb=1536, disk_gb=10, image="template:alpine"
    )
    config = rendered(spec, vm_type="vz")
    assert (config["cpus"], config["memory"], config["disk"]) == (2, "1536MiB", "10GiB")
    assert config["base"] == ["template:alpine"]
    assert config["vmType"] == "vz"
    assert resources(spec, LimaTemplate()).memory_bytes == 1536 * 1024 * 1024


def test_labels_and_network_travel_as_params_that_provisioning_uses() -> None:
    config = rendered(VMSpec(project_id="prj_a", name="a", network="egress"))
    assert json.loads(config["param"][PARAM_LABELS]) == LABELS
    assert config["param"][PARAM_NETWORK] == "egress"
    # Lima refuses a param that no provision entry uses.
    entries = json.dumps(config["provision"])
    for key in config["param"]:
        assert f"{{{{.Param.{key}}}}}" in entries
    [data] = [entry for entry in config["provision"] if entry["mode"] == "data"]
    assert data["path"] == LABELS_FILE


def test_the_header_names_the_vm_and_a_label_cannot_break_out_of_the_comment() -> None:
    labels = {**LABELS, "note": 'x"\n{"mounts": [{"location": "~"}]}'}
    text = render_lima_yaml(
        VMSpec(project_id="prj_a", name="a"), LimaTemplate(), vm_id="pvm-prj_a", labels=labels
    )
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "pvm-prj_a" in header[0]
    assert any("projectvm.project" in line for line in header)
    body = json.loads("\n".join(line for line in text.splitlines() if not line.startswith("#")))
    assert body["mounts"] == []


def test_the_provisioning_script_is_valid_shell_and_installs_only_whats_missing() -> None:
    script = provision_script(["python3", "git"])
    assert script.startswith("#!/bin/sh\n")
    assert re.search(r'^packages="git iptables python3"$', script, re.MULTILINE)
    assert "dpkg-query" in script
    assert "rpm -q" in script
    assert "install -d -m 0755 -o" in script
    shell = shutil.which("sh")
    assert shell is not None
    checked = subprocess.run([shell, "-n"], input=script.encode(), capture_output=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("package", ["git; rm -rf /", "$(reboot)", "-y", ""])
def test_a_package_name_that_is_not_one_is_refused(package: str) -> None:
    with pytest.raises(ValueError, match="not a package name"):
        provision_script([package])


def test_the_config_and_the_rendered_file_agree() -> None:
    spec = VMSpec(project_id="prj_a", name="a")
    assert rendered(spec) == lima_config(spec, LimaTemplate(), labels=LABELS)


def test_provisioning_makes_the_command_user_and_gives_root_the_agents_directory() -> None:
    [script] = [
        entry["script"]
        for entry in rendered(VMSpec(project_id="prj_a", name="a"))["provision"]
        if entry["mode"] == "system"
    ]
    made = re.search(r"id -u (\S+) .*\|\| useradd (.*?) (\S+)\n", script.replace("\\\n", " "))
    assert made is not None, script
    assert made.group(1) == made.group(3) == COMMAND_USER
    assert "--system" in made.group(2)
    assert f"install -d -m 0755 -o root -g root {AGENT_DIR}" in script
    assert '-o "$owner" -g "$owner" /workspace' in script
    assert f"owner={COMMAND_USER}" in script
    assert "{{.UID}}" not in script  # nothing is Lima's user's any more
