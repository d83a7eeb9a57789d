"""Packaging: the wheel carries the man pages and predictor data; ``man miso`` finds them.

The static checks always run. Building a wheel needs setuptools and wheel from a package
index (build isolation), so that part runs only with ``MISO_TEST_WHEEL=1``.
"""

from __future__ import annotations

import ast
import glob
import os
import re
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


def _names(reqs: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in reqs
    }


def test_runtime_dependencies_are_the_allowed_ones() -> None:
    names = _names(_pyproject()["project"]["dependencies"])
    assert names <= {
        "typer", "rich", "nvidia-ml-py", "psutil", "scikit-learn", "joblib", "tomli",
        "numpy", "scipy",
    }  # fmt: skip
    assert "pyyaml" not in names  # YAML is written by hand; reading it is an extra
    (scipy,) = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("scipy")]
    assert ">=1.9" in scipy  # scipy.optimize.milp


# Import name -> distribution that provides it.
_DISTRIBUTIONS = {
    "numpy": "numpy", "scipy": "scipy", "sklearn": "scikit-learn", "joblib": "joblib",
    "psutil": "psutil", "rich": "rich", "typer": "typer", "pynvml": "nvidia-ml-py",
    "tomli": "tomli", "click": "click", "yaml": "pyyaml",
}  # fmt: skip


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level modules imported anywhere in miso_cli that are not its own or stdlib."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "miso_cli").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top == "miso_cli" or top in sys.stdlib_module_names:
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_import_is_declared() -> None:
    """numpy, scipy, ... are declared where imported; optional ones sit in an extra."""
    project = _pyproject()["project"]
    runtime = _names(project["dependencies"])
    extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
    for top, where in _third_party_imports().items():
        dist = _DISTRIBUTIONS.get(top)
        assert dist is not None, f"{top} imported at {where[0]}: add it to _DISTRIBUTIONS"
        if top == "yaml":  # read only for --merge-configmap, behind an ImportError hint
            assert dist in extras, where
        else:
            assert dist in runtime, f"{top} imported at {where[0]} but {dist} is not declared"


def test_no_typer_internals() -> None:
    """Only Typer's and Click's public API: no typer._click, no typer.main (except
    ``typer.main.get_command``, the Click command of an application, which Typer's
    "Using Click" tutorial documents)."""
    for path in (ROOT / "miso_cli").rglob("*.py"):
        text = path.read_text(encoding="utf-8").replace("typer.main.get_command(", "")
        for bad in ("typer._click", "typer.main", "from click", "import click"):
            assert bad not in text, f"{path.relative_to(ROOT)}: {bad}"


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
