"""Packaging: the wheel carries the man pages and predictor data; ``man miso`` finds them.

The static checks always run. Building a wheel needs setuptools and wheel from a package
index (build isolation), so that part runs only with ``MISO_TEST_WHEEL=1``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_man_pages_are_data_files() -> None:
    data_files = _pyproject()["tool"]["setuptools"]["data-files"]
    patterns = data_files["share/man/man1"]
    matched = {Path(p).name for pat in patterns for p in glob.glob(str(ROOT / pat))}
    pages = {p.name for p in (ROOT / "man").glob("*.1")}
    assert pages and pages <= matched


def test_console_script() -> None:
    assert _pyproject()["project"]["scripts"]["miso"] == "miso_cli.cli:main"


def test_runtime_dependencies_are_the_allowed_ones() -> None:
    deps = _pyproject()["project"]["dependencies"]
    names = {d.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
    assert names <= {
        "typer", "rich", "nvidia-ml-py", "psutil", "scikit-learn", "joblib", "tomli",
    }  # fmt: skip
    assert "pyyaml" not in {n.lower() for n in names}  # YAML is written by hand


def _copy_tree(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache",
        ".hypothesis", ".ruff_cache", ".mypy_cache",
    )  # fmt: skip
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("MISO_TEST_WHEEL") != "1":
        pytest.skip("set MISO_TEST_WHEEL=1 to build the wheel (needs a package index)")
    base = tmp_path_factory.mktemp("wheel")
    src = _copy_tree(base / "src")
    out = base / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_carries_man_pages_and_predictors(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for page in (ROOT / "man").glob("*.1"):
        assert any(n.endswith(f".data/data/share/man/man1/{page.name}") for n in names), page
    predictors = ROOT / "predictors"
    if predictors.is_dir():
        for f in predictors.iterdir():
            if f.is_file() and not f.name.startswith("."):
                assert any(n.endswith("/" + f.name) for n in names), f"{f.name} not in the wheel"


def test_installed_prefix_has_man_and_version(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--prefix", str(prefix),
         str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (prefix / "share" / "man" / "man1" / "miso.1").exists()
    (site,) = prefix.glob("lib/python*/site-packages")
    env = dict(os.environ, PYTHONPATH=str(site), PATH=f"{prefix / 'bin'}{os.pathsep}/usr/bin:/bin")
    r = subprocess.run(
        [str(prefix / "bin" / "miso"), "--version"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("miso ")
    if shutil.which("man"):
        env.pop("MANPATH", None)
        r = subprocess.run(
            ["man", "-w", "miso"], capture_output=True, text=True, env=env, check=False
        )
        assert r.stdout.strip() == str(prefix / "share" / "man" / "man1" / "miso.1")
