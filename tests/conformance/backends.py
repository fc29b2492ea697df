"""How the conformance suite runs each driver here: its test environments ("backends").

A driver listed in ``VARIANTS`` runs once per variant, with the driver options its environment
yields (a fake's path, the shared test image, a mode); the others run once, by name, with
default options. An environment gets the values of the fixtures its backend ``needs``
(session fixtures that build images or fetch binaries, resolved before the test's event loop
runs) and the test's data directory.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import lima
from tests.fakes.fake_fly import FakeFlyMachinesAPI, processes_under
from vm_drivers.registry import available_driver_names

__all__ = ["BACKENDS", "Backend"]

Environment = Callable[[dict[str, Any], Path], AbstractAsyncContextManager[dict[str, Any]]]


@asynccontextmanager
async def _defaults(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    yield {}


@dataclass(frozen=True)
class Backend:
    """One way to run the suite: a parameter id, the driver's name, its environment and the
    fixtures that environment needs."""

    id: str
    driver: str
    environment: Environment = _defaults
    needs: tuple[str, ...] = ()


@asynccontextmanager
async def _local_image(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The local sandbox with the runtime image's Debian tree as its root (the shared test
    tree), instead of the minimal view of the host."""
    yield {"root": "image", "rootfs": str(fixtures["rootfs_tree"])}


@asynccontextmanager
async def _qemu(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The shared test image, built once per machine (TCG here: each VM boots in seconds)."""
    yield {"images": str(fixtures["qemu_images"])}


@asynccontextmanager
async def _firecracker_fake(
    fixtures: dict[str, Any], data_dir: Path
) -> AsyncIterator[dict[str, Any]]:
    """fake-firecracker (Firecracker's API and vsock handshake, the real agent as a process):
    everything the driver does between the API and the channel, without a guest kernel."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    binary: Path = fixtures["fake_firecracker_bin"]
    yield {"binary": str(binary / "firecracker"), "images_dir": str(fixtures["fake_images"])}


@asynccontextmanager
async def _firecracker_kvm(
    fixtures: dict[str, Any], data_dir: Path
) -> AsyncIterator[dict[str, Any]]:
    """The real Firecracker booting the real image: where the host's KVM can run a guest. The
    probe's verdict is taken once a session; here it skips every test with its reason."""
    verdict = fixtures["firecracker_kvm_verdict"]
    if not verdict.availability.usable:
        pytest.skip(f"driver firecracker is not usable here: {verdict.availability.reason}")
    (data_dir / "firecracker").mkdir(parents=True, exist_ok=True)
    shutil.copy(verdict.cache, data_dir / "firecracker" / "boot-probe.json")
    yield {"binary": str(verdict.binary / "firecracker"), "images_dir": str(verdict.images)}


@asynccontextmanager
async def _lima(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """No Lima here: fake-limactl runs each instance as a bubblewrap sandbox (tests/fakes)."""
    reason = lima.missing_tools()
    if reason:
        pytest.skip(f"lima cannot run here: {reason}")
    async with lima.per_project_environment() as options:
        yield options


@asynccontextmanager
async def _lima_shared(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The seed's shared mode (LIMA_INSTANCE): projects as sandboxes in one fake instance."""
    reason = lima.missing_tools()
    if reason:
        pytest.skip(f"lima cannot run here: {reason}")
    async with lima.shared_environment() as options:
        yield options


@asynccontextmanager
async def _fly(fixtures: dict[str, Any], data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """No network to Fly here: FakeFlyMachinesAPI (spec-validated, stateful) with its fake
    proxy, its Machines running the real agent in bubblewrap sandboxes."""
    if shutil.which("bwrap") is None:
        pytest.skip("the fake Fly Machines run in bubblewrap, which is not installed here")
    root = data_dir.parent / "fake-fly"
    async with FakeFlyMachinesAPI(root) as fake:
        yield fake.driver_options(await fake.serve_http())
        fake.assert_clean()
    assert processes_under(root) == [], "the fake left Machine processes running"


VARIANTS: dict[str, list[Backend]] = {
    "local": [
        Backend("local", "local"),
        Backend("local-image", "local", _local_image, needs=("rootfs_tree",)),
    ],
    "fly": [Backend("fly", "fly", _fly)],
    "lima": [Backend("lima", "lima", _lima), Backend("lima-shared", "lima", _lima_shared)],
    "qemu": [Backend("qemu", "qemu", _qemu, needs=("qemu_images",))],
    "firecracker": [
        Backend(
            "firecracker-fake",
            "firecracker",
            _firecracker_fake,
            needs=("fake_firecracker_bin", "fake_images"),
        ),
        Backend(
            "firecracker-kvm", "firecracker", _firecracker_kvm, needs=("firecracker_kvm_verdict",)
        ),
    ],
}


def _backends() -> list[Backend]:
    found: list[Backend] = []
    for name in available_driver_names():
        found.extend(VARIANTS.get(name, [Backend(name, name)]))
    return found


BACKENDS: dict[str, Backend] = {backend.id: backend for backend in _backends()}
