"""Pushing the runtime image with the agent baked in, to a fake OCI registry on localhost."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr

from guest_runtime.bundle import agent_zipapp
from tests.fakes.fake_oci_registry import FakeOCIRegistry
from vm_drivers.errors import DriverConfigError, DriverUnavailable
from vm_drivers.image_push import ImageReference, RegistryAuth, push_runtime_image

pytestmark = pytest.mark.anyio


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A tiny stand-in for the Debian root filesystem archive."""
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("etc/os-release", b"ID=debian\n"), ("usr/bin/python3", b"#!fake")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture
async def registry() -> AsyncIterator[tuple[FakeOCIRegistry, str]]:
    fake = FakeOCIRegistry()
    async with anyio.create_task_group() as group:
        address, server = await fake.serve(group)
        yield fake, address
        server.should_exit = True


def auth(fake: FakeOCIRegistry, password: str | None = None) -> RegistryAuth:
    return RegistryAuth(fake.username, SecretStr(password or fake.password))


async def test_the_runtime_image_is_pushed_with_the_agent_baked_in(
    registry: tuple[FakeOCIRegistry, str], rootfs: Path
) -> None:
    fake, address = registry
    with anyio.fail_after(60):
        pinned = await push_runtime_image(rootfs, f"{address}/pvm-app:v1", auth=auth(fake))
    repository, _, digest = pinned.partition("@")
    assert repository == f"{address}/pvm-app"
    assert fake.manifest("pvm-app", "v1") == fake.manifest("pvm-app", digest)
    manifest = fake.manifest("pvm-app", digest)
    config = json.loads(fake.blobs[manifest["config"]["digest"]])
    layers = [gzip.decompress(fake.blobs[layer["digest"]]) for layer in manifest["layers"]]
    assert config["rootfs"]["diff_ids"] == [
        f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers
    ]
    assert config["config"]["WorkingDir"] == "/workspace"
    with tarfile.open(fileobj=io.BytesIO(layers[0])) as base:
        assert base.extractfile("etc/os-release").read() == b"ID=debian\n"  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(layers[1])) as agent:
        member = agent.getmember(".projectvm/agent.pyz")
        assert member.mode == 0o755
        assert agent.extractfile(member).read() == agent_zipapp()  # type: ignore[union-attr]


async def test_a_second_push_sends_no_blob_again_and_names_the_same_image(
    registry: tuple[FakeOCIRegistry, str], rootfs: Path
) -> None:
    fake, address = registry
    first = await push_runtime_image(rootfs, f"{address}/pvm-app:v1", auth=auth(fake))
    uploads_before = sum(1 for method, _ in fake.requests if method == "PUT")
    second = await push_runtime_image(rootfs, f"{address}/pvm-app:v2", auth=auth(fake))
    uploads_after = sum(1 for method, _ in fake.requests if method == "PUT")
    assert second.split("@")[1] == first.split("@")[1]
    assert uploads_after - uploads_before == 1  # the manifest only


async def test_wrong_credentials_are_refused_with_what_to_check(
    registry: tuple[FakeOCIRegistry, str], rootfs: Path
) -> None:
    fake, address = registry
    with pytest.raises(DriverConfigError, match="refused the credentials"):
        await push_runtime_image(rootfs, f"{address}/pvm-app:v1", auth=auth(fake, "nope"))
    with pytest.raises(DriverConfigError, match="wants credentials"):
        await push_runtime_image(rootfs, f"{address}/pvm-app:v1")
    assert fake.blobs == {}
    assert fake.manifests == {}


async def test_an_unreachable_registry_or_a_reference_without_host_is_a_clear_error(
    rootfs: Path,
) -> None:
    with pytest.raises(DriverUnavailable, match="did not answer"):
        await push_runtime_image(rootfs, "127.0.0.1:1/pvm-app:v1", timeout_s=5)
    with pytest.raises(DriverConfigError, match="no registry host"):
        ImageReference.parse("pvm-app:v1")
    assert ImageReference.parse("registry.fly.io/pvm-app").base_url == "https://registry.fly.io"
    assert ImageReference.parse("registry.fly.io/pvm-app").tag == "latest"


async def test_projectvm_image_push_pushes_the_built_tree_and_prints_it_pinned(
    registry: tuple[FakeOCIRegistry, str], tmp_path: Path
) -> None:
    import os
    import sys

    from guest_runtime.image.builder import tree_path
    from guest_runtime.image.rootfs import IMAGE_VERSION

    fake, address = registry
    data_dir = tmp_path / "data"
    tree = tree_path(data_dir, "runtime")
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "projectvm-image").write_text(f"template=runtime\nversion={IMAGE_VERSION}\n")
    (tree / "etc" / "os-release").write_text("ID=debian\n")
    argv = [sys.executable, "-m", "server.cli", "--data-dir", str(data_dir), "image", "push"]
    env = {**os.environ, "REGISTRY_PASSWORD": fake.password}
    env.pop("FLY_API_TOKEN", None)
    refused = await anyio.run_process([*argv, "--to", f"{address}/pvm:v1"], check=False, env=env)
    assert refused.returncode != 0
    assert b"FLY_API_TOKEN is not set" in refused.stderr
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [
                *argv,
                "--to",
                f"{address}/pvm:v1",
                "--username",
                fake.username,
                "--password-env",
                "REGISTRY_PASSWORD",
            ],
            check=False,
            env=env,
        )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    pinned = next(line for line in out.splitlines() if line.startswith("pushed: "))[8:]
    repository, _, digest = pinned.partition("@")
    assert repository == f"{address}/pvm"
    manifest = fake.manifest("pvm", digest)
    base = gzip.decompress(fake.blobs[manifest["layers"][0]["digest"]])
    with tarfile.open(fileobj=io.BytesIO(base)) as layer:
        assert layer.extractfile("./etc/os-release").read() == b"ID=debian\n"  # type: ignore[union-attr]
    assert f'image = "{pinned}"' in out
    assert fake.password not in out + done.stderr.decode()
