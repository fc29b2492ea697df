"""The guest's path confinement, exercised directly on a temporary workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest_runtime.agent.errors import GuestError
from guest_runtime.agent.paths import Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    root = tmp_path / "workspace"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print(1)\n")
    return Workspace(str(root))


def kind_of(workspace: Workspace, path: str, **options: bool) -> str:
    with pytest.raises(GuestError) as caught:
        workspace.resolve(path, **options).close()
    return caught.value.kind


@pytest.mark.parametrize(
    "path", ["../x", "src/../../x", "/etc/passwd", "/", "..", "./../workspace/x"]
)
def test_paths_that_leave_the_workspace_are_refused(workspace: Workspace, path: str) -> None:
    assert kind_of(workspace, path) == "path_outside_workspace"


def test_a_nul_byte_is_refused(workspace: Workspace) -> None:
    assert kind_of(workspace, "src/ma\x00in.py") == "invalid_path"


def test_relative_and_absolute_paths_inside_resolve_to_the_same_file(
    workspace: Workspace,
) -> None:
    for path in ("src/main.py", f"{workspace.root}/src/main.py", "./src/./x/../main.py"):
        with workspace.resolve(path) as res:
            assert res.parts == ["src", "main.py"]
            assert res.name == "main.py"


def test_a_symlink_to_the_root_filesystem_is_refused(workspace: Workspace) -> None:
    os.symlink("/", os.path.join(workspace.root, "escape"))
    assert kind_of(workspace, "escape/etc/passwd") == "path_outside_workspace"
    assert kind_of(workspace, "escape") == "path_outside_workspace"


def test_a_relative_symlink_climbing_out_is_refused(workspace: Workspace) -> None:
    os.symlink("../../..", os.path.join(workspace.root, "src", "up"))
    assert kind_of(workspace, "src/up/etc") == "path_outside_workspace"


def test_symlinks_that_stay_inside_are_followed(workspace: Workspace) -> None:
    os.symlink("src/main.py", os.path.join(workspace.root, "link.py"))
    os.symlink(f"{workspace.root}/src", os.path.join(workspace.root, "abs-src"))
    with workspace.resolve("link.py") as res:
        assert res.parts == ["src", "main.py"]
    with workspace.resolve("abs-src/main.py") as res:
        assert res.parts == ["src", "main.py"]


def test_a_final_symlink_is_kept_when_not_following(workspace: Workspace) -> None:
    os.symlink("/etc/passwd", os.path.join(workspace.root, "pw"))
    with workspace.resolve("pw", follow_final=False) as res:
        assert res.name == "pw"
    assert kind_of(workspace, "pw") == "path_outside_workspace"


def test_symlink_loops_end_with_an_error(workspace: Workspace) -> None:
    os.symlink("b", os.path.join(workspace.root, "a"))
    os.symlink("a", os.path.join(workspace.root, "b"))
    assert kind_of(workspace, "a") == "invalid_path"


def test_missing_directories_are_created_only_when_asked(workspace: Workspace) -> None:
    assert kind_of(workspace, "new/dir/file.txt") == "not_found"
    with workspace.resolve("new/dir/file.txt", create_dirs=True) as res:
        assert res.name == "file.txt"
    assert os.path.isdir(os.path.join(workspace.root, "new", "dir"))


def test_a_file_used_as_a_directory_is_refused(workspace: Workspace) -> None:
    assert kind_of(workspace, "src/main.py/x") == "not_a_directory"
