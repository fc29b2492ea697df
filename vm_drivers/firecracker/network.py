"""Egress for a Firecracker VM: one tap device per VM, made with ``ip`` (root only).

A VM without egress gets no network interface at all (only vsock). With egress, the driver
pre-creates the tap and brings it up (Firecracker would leave a tap it made itself down), gives
the host end a /30 address carved from a configured subnet, and tells the guest its address with
the standard ``ip=`` kernel argument. Tap names are deterministic and at most 15 characters
(IFNAMSIZ); the ProjectVM labels ride in the interface's alias, so stray taps can be found.
Forwarding and NAT to the outside are the host administrator's choice and are not touched here.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

from vm_drivers.errors import DriverConfigError, DriverUnavailable, VMOperationFailed

__all__ = ["TapPlan", "create_tap", "delete_tap", "egress_unavailable_reason", "plan_tap"]

IFNAMSIZ = 15


@dataclass(frozen=True)
class TapPlan:
    name: str
    host: ipaddress.IPv4Interface
    guest: ipaddress.IPv4Address
    guest_mac: str

    def boot_arg(self) -> str:
        """``ip=<client>::<gateway>:<netmask>::eth0:off`` (kernel nfsroot syntax)."""
        return f"ip={self.guest}::{self.host.ip}:{self.host.netmask}::eth0:off"


def plan_tap(key: str, subnet: str) -> TapPlan:
    """The tap of the VM whose runtime key is ``key`` (hex): name, addresses, MAC."""
    name = f"pvm{key}"[:IFNAMSIZ]
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as err:
        raise DriverConfigError(
            f"egress_subnet {subnet!r} is not an IPv4 network: {err}; use e.g. 172.30.0.0/16"
        ) from err
    blocks = list(network.subnets(new_prefix=30)) if network.prefixlen <= 30 else []
    if not blocks:
        raise DriverConfigError(f"egress_subnet {subnet} is too small; use a /24 or larger")
    block = blocks[int(key, 16) % len(blocks)]
    host, guest = list(block.hosts())
    mac = "06:00:" + ":".join(f"{octet:02x}" for octet in guest.packed)
    return TapPlan(name, ipaddress.IPv4Interface(f"{host}/30"), guest, mac)


def egress_unavailable_reason() -> str | None:
    """Why taps cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "making a tap device needs root (the server does not run as root)"
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        return "the `ip` command (iproute2) is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun does not exist (load the tun module: modprobe tun)"
    return None


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


async def _run(*args: str) -> None:
    result = await anyio.run_process([_ip(), *args], check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise VMOperationFailed(
            f"`ip {' '.join(args)}` failed: {detail}; check the server runs as root and the "
            "egress_subnet does not clash with the host's own addresses"
        )


async def create_tap(plan: TapPlan, labels: dict[str, str]) -> None:
    """Create (or re-create) the tap, address its host end, label it, bring it up."""
    reason = egress_unavailable_reason()
    if reason is not None:
        raise DriverUnavailable(
            "firecracker",
            f"this project allows egress, but {reason}",
            "run the server as root with iproute2 installed, or set the project's network to none",
        )
    await delete_tap(plan.name)
    await _run("tuntap", "add", "dev", plan.name, "mode", "tap")
    try:
        await _run("addr", "add", str(plan.host), "dev", plan.name)
        alias = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        await _run("link", "set", "dev", plan.name, "alias", alias[:255])
        await _run("link", "set", "dev", plan.name, "up")
    except VMOperationFailed:
        await delete_tap(plan.name)
        raise


async def delete_tap(name: str) -> None:
    """Remove the tap if it exists."""
    if not await anyio.Path(f"/sys/class/net/{name}").exists():
        return
    await _run("link", "del", "dev", name)
