"""The guest's iterative tree walk (``guest_runtime/agent/walk.py``): any depth, few descriptors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_runtime.agent.errors import GuestError
from guest_runtime.agent.paths import DIR_FLAGS
from guest_runtime.agent.walk import MAX_OPEN_DIRS, Walk, remove_tree


def chain(root: Path, depth: int) -> Path:
    """``root/d/d/.../d`` (``depth`` levels) made with descriptors: paths that long fail."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as leaf:
            leaf.write("leaf")
    finally:
        os.close(fd)
    return root


@pytest.fixture(autouse=True)
def tidy(tmp_path: Path) -> Iterator[None]:
    """Deep trees are removed here: pytest's own clean-up (shutil.rmtree) recurses."""
    yield
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(str(child))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tree_deeper_than_python_recurses_is_walked_in_order(tmp_path: Path) -> None:
    chain(tmp_path, 1500)
    (tmp_path / "a.txt").write_text("a")
    before = open_descriptors()
    most = 0
    paths = []
    for entry in Walk(os.open(tmp_path, DIR_FLAGS), ["top"]):
        most = max(most, open_descriptors() - before)
        paths.append(entry.path)
    assert paths[0] == "top/a.txt"
    assert paths[1] == "top/d"
    assert paths[-1] == "top/" + "d/" * 1500 + "leaf.txt"
    assert len(paths) == 1502
    assert most <= MAX_OPEN_DIRS + 2
    assert open_descriptors() == before


def test_post_order_puts_a_directory_after_what_it_holds(tmp_path: Path) -> None:
    chain(tmp_path, 3)
    names = [entry.path for entry in Walk(os.open(tmp_path, DIR_FLAGS), [], post_order=True)]
    assert names == ["d/d/d/leaf.txt", "d/d/d", "d/d", "d"]


def test_a_deadline_stops_the_walk_and_says_it_is_partial(tmp_path: Path) -> None:
    chain(tmp_path, 10)
    walk = Walk(os.open(tmp_path, DIR_FLAGS), [], deadline=0.0)
    assert list(walk) == []
    assert walk.complete is False


def test_a_directory_moved_during_a_deep_walk_fails_it(tmp_path: Path) -> None:
    chain(tmp_path, MAX_OPEN_DIRS + 10)
    (tmp_path / "z").mkdir()
    walk = iter(Walk(os.open(tmp_path, DIR_FLAGS), []))
    for entry in walk:
        if entry.name == "leaf.txt":
            break
    # The shallow levels' descriptors were given up; one of them moves away meanwhile.
    os.rename(tmp_path / "d" / "d", tmp_path / "z" / "moved")
    with pytest.raises(GuestError, match="was moved while being walked"):
        list(walk)


def test_remove_tree_removes_any_depth(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    chain(tmp_path / "x", 3000)
    assert remove_tree(str(tmp_path / "x")) is True
    assert not (tmp_path / "x").exists()
    assert remove_tree(str(tmp_path / "x")) is False
