"""A non-editable install works: the wheel carries every module and data file, and an installed
`autofit` finds its shipped spaces and model table from a directory outside the checkout.

The wheel is installed with --no-deps into a fresh venv that sees this venv's packages (torch and the
rest need no download), so the test takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (an in-tree build/ could carry files deleted since)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("autofit", "search_spaces"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("autofit-*.whl")
    return whl


def _source_files(pattern: str, under: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / under).rglob(pattern) if "__pycache__" not in p.parts}


def test_wheel_carries_every_module_space_and_table(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _source_files("*.py", "autofit") <= names, "a package is missing from pyproject's [tool.setuptools] packages"
    spaces = {f"autofit/search_spaces/{Path(p).name}" for p in _source_files("*.yaml", "search_spaces")}
    assert spaces and spaces <= names
    assert _source_files("*.yaml", "autofit/data") <= names


def test_installed_wheel_finds_its_spaces_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # This venv's packages (torch, click, ...) without its editable autofit: a path in a .pth file is
    # added to sys.path, but the .pth files inside it (the editable finder) are not run.
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> str:
        res = subprocess.run(args, cwd=away, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "--space" in run(str(env_dir / "bin" / "autofit"), "search", "--help")
    code = ("import autofit, autofit.search.space as s; print(autofit.__file__); print(s.SPACES_DIR); "
            "print(s.load_space('auto', num_gpus=1).name); print(sorted(p.stem for p in s.SPACES_DIR.glob('*.yaml')))")
    file, spaces_dir, name, shipped = run(str(py), "-c", code).splitlines()
    assert Path(file).is_relative_to(site) and Path(spaces_dir).is_relative_to(site)
    assert name == "auto" and "cpu-tiny" in shipped
    table = run(str(env_dir / "bin" / "autofit"), "estimate", "--model", "THUDM/glm-4-9b-chat", "--max-token", "1024")
    assert "glm-4-9b-chat" in table and "predicted peak" in table
