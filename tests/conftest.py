"""Shared fixtures. Every test runs hardware-free; real-GPU tests carry the ``gpu`` marker."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # once, before any pytest-xdist worker starts
        _compile_bytecode()


def _compile_bytecode() -> None:
    """Write the bytecode of miso_cli/ and examples/ once, up front.

    The suite starts over a thousand Python processes (every job runs under
    ``miso_cli.runtime.jobwrap``, most as ``examples/sim_train.py``; the README's lines run
    ``miso``). Where PYTHONDONTWRITEBYTECODE is set, as in some sandboxes, each of them would
    compile every module it imports from source, a quarter of its start-up; with the
    bytecode written they read it instead. Nothing is written when it is current, and the
    files are ignored by git."""
    import compileall

    for folder, depth in ((ROOT / "miso_cli", 10), (ROOT / "examples", 0)):
        try:
            compileall.compile_dir(folder, maxlevels=depth, quiet=2)
        except OSError:  # a read-only checkout: the processes compile as they go
            pass


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state directory and runtime directory, so that tests can run
    side by side (pytest-xdist): nothing leaks into ~/.local/state, and no GPU lock or MPS
    pipe folder is shared through /run/miso (root) or $XDG_RUNTIME_DIR/miso.

    The runtime directory is short (``/tmp/miso-rt-XXXXXXXX``) on purpose: MPS pipe folders
    move there when the state dir is too deep for a socket path (see miso_cli.gpu.mps)."""
    state = tmp_path / "state"
    runtime = tempfile.mkdtemp(prefix="miso-rt-")  # mode 0700, this user's alone
    monkeypatch.setenv("MISO_STATE_DIR", str(state))
    monkeypatch.setenv("MISO_RUNTIME_DIR", runtime)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("MISO_GPU", raising=False)
    monkeypatch.delenv("MISO_DEBUG", raising=False)
    yield state
    shutil.rmtree(runtime, ignore_errors=True)


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
    _long_first(items)
    if os.environ.get("MISO_REAL_GPU") == "1":
        return
    skip = pytest.mark.skip(reason="real-GPU test: set MISO_REAL_GPU=1 on a machine with a driver")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- running the whole suite in parallel ------------------------------------------------
#
# `python -m pytest` (the suite from testpaths, no test named) runs on WORKERS processes of
# pytest-xdist when it is installed (it is in the `test` extra): a fifth of the suite's time
# is tests that pace real processes (examples/sim_train.py) and mostly wait for them, so
# more workers than cores keep the CPUs busy. Naming tests (`pytest tests/test_x.py`) runs
# them in this process, as does `-n 0`; `-n N` or MISO_TEST_WORKERS=N choose the count.
WORKERS = 4

# Tests that take longest (real processes, many of them): started first, so that they run
# beside the many short tests instead of after them (longest first keeps the workers even).
# A name no longer in the suite is simply not found.
LONG_FIRST = (
    "test_manpages.py::test_readme_commands_run_as_written[main]",
    "test_manpages.py::test_readme_commands_run_as_written[calibrate]",
    "test_run_dynamic.py::test_quickstart_default_policy_profiles_repartitions_and_observes",
    "test_predict_calibrate.py::test_calibrate_measures_restores_and_fits",
    "test_run_dynamic.py::test_resume_after_kill_9_during_profiling",
    "test_profiler.py::test_failures_oom_and_timeouts_are_recorded_not_retried",
    "test_profiler.py::test_colocated_jobs_measure_their_interference",
    "test_run_dynamic.py::test_plan_profile_stores_then_plans_from_the_store",
    "test_executor.py::test_policy_miso_resumes_after_an_interrupt",
    "test_profiler.py::test_reset_layout_profiles_on_the_whole_gpu_and_restores",
    "test_run_dynamic.py::test_a_move_does_not_block_the_other_gpus",
    "test_parity.py::test_run_and_simulate_decide_alike",
    "test_executor.py::test_sigint_checkpoints_then_resume_continues",
    "test_profiler.py::test_profiles_are_stored_reused_and_refreshed",
    "test_plan_cli.py::test_plan_after_profiling_prints_the_plan_format",
    "test_executor.py::test_resume_after_kill_9",
    "test_operate_e2e.py::",
    "test_run_cli.py::test_quickstart_example_runs",
    "test_manpages.py::test_readme_commands_run_as_written",
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Turn on pytest-xdist for the whole suite (see WORKERS); before xdist reads -n."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return
    if config.option.numprocesses is not None:  # -n given on the command line
        return
    env = os.environ.get("MISO_TEST_WORKERS", "").strip()
    if env:
        config.option.numprocesses = int(env)
    elif config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.option.numprocesses = WORKERS
    else:
        return
    if config.option.numprocesses and config.option.dist == "no":
        # One test at a time to whichever worker is free (a worker holds the test it runs
        # and one more): with the order below, no long test waits behind another.
        config.option.dist = "load"
        config.option.maxschedchunk = 1


def _long_rank(item: pytest.Item) -> int:
    nodeid = item.nodeid.split("/")[-1]
    for rank, prefix in enumerate(LONG_FIRST):
        if nodeid.startswith(prefix):
            return rank
    return len(LONG_FIRST)


def _long_first(items: list[pytest.Item]) -> None:
    """The long tests first, each followed by a short one: a worker is sent the test it
    runs and the next, so the next is a short one, never a second long one."""
    ranked = sorted(items, key=_long_rank)  # stable: the rest keep their order
    n_long = sum(1 for it in ranked if _long_rank(it) < len(LONG_FIRST))
    longs, rest = ranked[:n_long], ranked[n_long:]
    order: list[pytest.Item] = []
    for i, item in enumerate(longs):
        order.append(item)
        if i < len(rest):
            order.append(rest[i])
    order.extend(rest[len(longs) :])
    items[:] = order


def shared_once(tmp_path_factory: pytest.TempPathFactory, key: str, make: Callable[[], Any]):
    """``make()``, computed once per test run even when pytest-xdist spreads the tests that
    need it over several workers (the first one computes and pickles it under the run's
    base temp dir, the others wait on a lock and read it). For costly, deterministic test
    data (a fitted model) that a module-scoped fixture alone would recompute per worker."""
    import fcntl
    import pickle

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the run's workers
    path = base / f"shared-{key}.pickle"
    with open(base / f"shared-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            with open(path, "rb") as fh:
                return pickle.load(fh)  # written by this run, just above
        value = make()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh)
        os.replace(tmp, path)
        return value
