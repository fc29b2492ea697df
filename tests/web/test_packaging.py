"""A wheel built from the tree carries the dashboard: installing ProjectVM needs no build step
and no network for its pages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server/surfaces/http/dashboard/static"
SOURCES = ("pyproject.toml", "README.md", "server", "vm_drivers", "guest_runtime")


@pytest.mark.slow
def test_a_wheel_built_from_the_tree_contains_every_dashboard_file(tmp_path: Path) -> None:
    # A copy of what a wheel is built from: no build/ left by an earlier build can help.
    tree = tmp_path / "tree"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(wheels), str(tree)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"this Python cannot build wheels here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("projectvm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "server/surfaces/http/dashboard/static/" + path.relative_to(STATIC).as_posix()
        for path in STATIC.rglob("*")
        if path.is_file()
    }
    assert expected
    assert expected <= names, sorted(expected - names)
