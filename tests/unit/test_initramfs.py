"""What a driver appends to a VM image's initramfs at boot: this agent and the init for it."""

from __future__ import annotations

import gzip

from guest_runtime.image.initramfs import AGENT_PATH, agent_cpio, boot_payload_digest, init_script


def _names_and_data(archive: bytes) -> dict[str, bytes]:
    """The files of a newc cpio archive (enough of the format for our own archives)."""
    files, at = {}, 0
    while True:
        header = archive[at : at + 110]
        assert header[:6] == b"070701"
        size, name_size = int(header[54:62], 16), int(header[94:102], 16)
        name_end = at + 110 + name_size
        name = archive[at + 110 : name_end - 1].decode()
        data_at = name_end + (-name_end % 4)
        if name == "TRAILER!!!":
            return files
        files[name] = archive[data_at : data_at + size]
        at = data_at + size + (-(data_at + size) % 4)


def test_the_appended_archive_carries_the_init_that_starts_this_agent() -> None:
    files = _names_and_data(gzip.decompress(agent_cpio(b"agent bytes")))
    # An image built by an older version keeps its own init; this one replaces it at boot, so
    # the init always passes the flags this agent knows (e.g. --run-as).
    assert files["init"] == init_script()
    assert files[AGENT_PATH] == b"agent bytes"


def test_the_payload_name_changes_with_the_agent() -> None:
    assert boot_payload_digest("a") != boot_payload_digest("b")
    assert boot_payload_digest("a") == boot_payload_digest("a")
