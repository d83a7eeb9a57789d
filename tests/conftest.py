"""Shared fixtures. Every test runs hardware-free; real-GPU tests carry the ``gpu`` marker."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Property tests draw the same examples on every run, so the suite passes or fails the same
# way on every machine; new ground is searched with a seed of your own
# (pytest --hypothesis-seed=N, or HYPOTHESIS_EXPLORE=1) and by benchmarks/chaos.py.
settings.register_profile("miso", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("HYPOTHESIS_EXPLORE") else "miso")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state directory; nothing leaks into ~/.local/state."""
    state = tmp_path / "state"
    monkeypatch.setenv("MISO_STATE_DIR", str(state))
    monkeypatch.delenv("MISO_GPU", raising=False)
    monkeypatch.delenv("MISO_DEBUG", raising=False)
    return state


@pytest.fixture
def state_dir(_isolated_state: Path) -> Path:
    return _isolated_state


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``: real A100 measurements, present in the development checkout only."""
    if not (SHARED_DATA / "a100-40gb" / "catalog.csv").exists():
        pytest.skip("../shared/data is not present (it ships with the development checkout only)")
    return SHARED_DATA


@pytest.fixture
def cli():
    """Invoke ``miso`` in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from miso_cli.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        result = runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def parse_envelope(stdout: str) -> dict[str, Any]:
    """The last non-empty line of stdout, parsed as the JSON envelope."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines, "no output on stdout"
    env = json.loads(lines[-1])
    assert env["schema_version"] == 1
    assert env["status"] in ("ok", "error")
    return env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MISO_REAL_GPU") == "1":
        return
    skip = pytest.mark.skip(reason="real-GPU test: set MISO_REAL_GPU=1 on a machine with a driver")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
