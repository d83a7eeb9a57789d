"""``miso doctor`` and ``miso --version``: checks as data, blocking failures as exit codes."""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from miso_cli.commands import doctor
from miso_cli.errors import ExitCode, NoGpu, PermissionDenied
from tests.conftest import parse_envelope


@dataclass
class FakeInfo:
    index: int
    name: str = "NVIDIA A100-SXM4-40GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total_mb: int = 40960
    mig_capable: bool = True
    mig_current: bool = True
    mig_pending: bool = True
    model_key: str | None = "a100-40gb"


@dataclass
class FakeProc:
    pid: int
    used_memory_mb: float | None = None
    gi_id: int | None = None
    ci_id: int | None = None
    device_uuid: str = "GPU-0"


@dataclass
class FakeDriver:
    """Answers like miso_cli.gpu.nvml.Driver, with the facts a test sets."""

    infos: list[FakeInfo] = field(default_factory=lambda: [FakeInfo(0)])
    driver: str | None = "550.54.15"
    nvml: str | None = "12.550.54.15"
    denied: bool = False
    procs: dict[int, list[FakeProc]] = field(default_factory=dict)
    is_simulated: bool = False
    closed: bool = False

    def device_count(self) -> int:
        return len(self.infos)

    def gpu(self, i: int) -> FakeInfo:
        return self.infos[i]

    def current_layout(self, i: int) -> Any:
        if self.denied:
            raise PermissionDenied("listing MIG instances needs root", hint="run with sudo")
        return None

    def processes(self, i: int) -> list[FakeProc]:
        return self.procs.get(i, [])

    def driver_version(self) -> str | None:
        return self.driver

    def nvml_version(self) -> str | None:
        return self.nvml

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_driver(monkeypatch: pytest.MonkeyPatch):
    """Put a fake ``miso_cli.gpu.nvml`` in place; returns a setter for what it opens."""
    holder: dict[str, Any] = {"driver": FakeDriver(), "error": None, "specs": []}

    def open_driver(spec: str | None, state_dir: Path) -> FakeDriver:
        holder["specs"].append(spec)
        if holder["error"] is not None:
            raise holder["error"]
        return holder["driver"]

    mod = types.ModuleType("miso_cli.gpu.nvml")
    mod.open_driver = open_driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "miso_cli.gpu.nvml", mod)
    return holder


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_healthy_machine_is_ready(fake_driver, state_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    checks = doctor.run_checks(None, state_dir)
    by = _by_name(checks)
    assert by["driver"].status == "ok" and "550.54.15" in by["driver"].message
    assert by["gpu0"].status == "ok"
    assert by["permission"].status == "ok"
    assert by["processes"].status == "ok"
    assert by["state-dir"].status == "ok"
    assert doctor.exit_code(checks) == ExitCode.OK
    assert fake_driver["driver"].closed


def test_no_driver_blocks_with_no_gpu(cli, fake_driver) -> None:
    fake_driver["error"] = NoGpu(
        "no NVIDIA driver", hint="use --gpu sim:a100-40gb to try miso on a simulated GPU"
    )
    code, out, err = cli("doctor", "--json")
    assert code == int(ExitCode.NO_GPU)
    env = parse_envelope(out)
    assert env["status"] == "error"
    assert env["errors"][0]["code"] == "NO_GPU"
    assert "sim:a100-40gb" in env["errors"][0]["hint"]
    checks = {c["name"]: c for c in env["data"]["checks"]}
    assert checks["driver"]["status"] == "fail" and checks["driver"]["blocks_run"]
    # The rest is still checked: a missing driver does not hide other findings.
    assert {"python", "packages", "state-dir", "model", "mps-control"} <= set(checks)
    for c in env["data"]["checks"]:
        assert set(c) == {"name", "status", "message", "fix", "blocks_run", "exit_code"}
        assert c["status"] in ("ok", "warn", "fail")


def test_gpu_option_reaches_the_driver(cli, fake_driver) -> None:
    cli("doctor", "--gpu", "sim:a100-40gb", "--json")
    assert fake_driver["specs"] == ["sim:a100-40gb"]


def test_permission_denied_blocks(fake_driver, state_dir: Path) -> None:
    fake_driver["driver"].denied = True
    checks = doctor.run_checks(None, state_dir)
    perm = _by_name(checks)["permission"]
    assert perm.status == "fail" and perm.blocks == ExitCode.PERMISSION
    assert perm.fix
    assert doctor.exit_code(checks) == ExitCode.PERMISSION


def test_pending_mode_and_not_capable_are_warnings(fake_driver, state_dir: Path) -> None:
    fake_driver["driver"].infos = [
        FakeInfo(0, mig_current=False, mig_pending=True),
        FakeInfo(1, name="Tesla T4", mig_capable=False, mig_current=False, mig_pending=False),
    ]
    checks = doctor.run_checks(None, state_dir)
    by = _by_name(checks)
    assert by["gpu0"].status == "warn" and "pending" in by["gpu0"].message
    assert "nvidia-smi -r -i 0" in (by["gpu0"].fix or "")
    assert by["gpu1"].status == "warn" and "not MIG-capable" in by["gpu1"].message
    assert doctor.exit_code(checks) in (ExitCode.OK, ExitCode.PERMISSION)


def test_no_gpu_at_all(fake_driver, state_dir: Path) -> None:
    fake_driver["driver"].infos = []
    checks = doctor.run_checks(None, state_dir)
    assert _by_name(checks)["gpus"].status == "fail"
    assert doctor.exit_code(checks) == ExitCode.NO_GPU


def test_foreign_processes_warn(fake_driver, state_dir: Path) -> None:
    fake_driver["driver"].procs = {0: [FakeProc(os.getpid(), 1024.0)]}
    check = _by_name(doctor.run_checks(None, state_dir))["processes"]
    assert check.status == "warn"
    assert str(os.getpid()) in check.message


def test_old_driver_is_no_gpu(fake_driver, state_dir: Path) -> None:
    fake_driver["driver"].driver = "418.67"
    checks = doctor.run_checks(None, state_dir)
    assert _by_name(checks)["driver-mig"].blocks == ExitCode.NO_GPU


def test_binding_older_than_driver_warns(fake_driver, state_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        doctor, "package_version", lambda d: "11.450.51" if d == "nvidia-ml-py" else "1.0"
    )
    fake_driver["driver"].driver = "550.54.15"
    binding = _by_name(doctor.run_checks(None, state_dir))["binding"]
    assert binding.status == "warn" and "pip install -U nvidia-ml-py" in (binding.fix or "")


def test_missing_package_fails(fake_driver, state_dir: Path, monkeypatch) -> None:
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda d: None if d == "psutil" else real(d))
    check = _by_name(doctor.run_checks(None, state_dir))["packages"]
    assert check.status == "fail" and "psutil" in check.message


def test_state_dir_world_writable_warns(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    state_dir.chmod(0o777)
    assert doctor.check_state_dir(state_dir).status == "warn"
    state_dir.chmod(0o700)
    assert doctor.check_state_dir(state_dir).status == "ok"


def test_state_dir_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    check = doctor.check_state_dir(f)
    assert check.status == "fail" and check.blocks is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_state_dir_unwritable_blocks(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        check = doctor.check_state_dir(d)
    finally:
        d.chmod(0o700)
    assert check.status == "fail" and check.blocks == ExitCode.PERMISSION


def test_model_age(state_dir: Path) -> None:
    assert doctor.check_model(state_dir, "a100-40gb").status == "warn"  # none fitted
    models = state_dir / "models"
    models.mkdir(parents=True)
    m = models / "a100-40gb.joblib"
    m.write_bytes(b"not unpickled by doctor")
    sidecar = models / "a100-40gb.joblib.json"
    sidecar.write_text('{"metadata": {"gpu_model": "a100-40gb", "sklearn_version": "1.9.1"}}')
    fresh = doctor.check_model(state_dir, "a100-40gb")
    assert fresh.status == "ok" and "a100-40gb.joblib" in fresh.message
    assert "sklearn_version 1.9.1" in fresh.message
    old = time.time() - 90 * 86400
    os.utime(m, (old, old))
    stale = doctor.check_model(state_dir, "a100-40gb")
    assert stale.status == "warn" and "90 day" in stale.message


def test_mps_control_on_path(tmp_path: Path, monkeypatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-cuda-mps-control"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    (control,) = [c for c in doctor.check_mps(False) if c.name == "mps-control"]
    assert control.status == "ok" and str(exe) in control.message
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (control,) = [c for c in doctor.check_mps(False) if c.name == "mps-control"]
    assert control.status == "warn"


def test_stale_mps_pipe_dir(tmp_path: Path, monkeypatch) -> None:
    pipe = tmp_path / "mps"
    pipe.mkdir()
    (pipe / "control").write_text("")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    check = doctor._mps_daemon_check()
    if "already running" in check.message:  # a real daemon on this machine
        pytest.skip("an MPS daemon runs here")
    assert check.status == "warn" and str(pipe) in check.message


def test_exit_code_precedence() -> None:
    fail = "fail"
    checks = [
        doctor.Check("a", fail, "x", blocks=ExitCode.PERMISSION),
        doctor.Check("b", fail, "y", blocks=ExitCode.NO_GPU),
        doctor.Check("c", "warn", "z"),
    ]
    assert doctor.exit_code(checks) == ExitCode.NO_GPU
    assert doctor.exit_code(checks[2:]) == ExitCode.OK


def test_human_output_one_line_per_check(cli, fake_driver, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    code, out, _ = cli("doctor")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    names = [c.name for c in doctor.run_checks(None, Path(os.environ["MISO_STATE_DIR"]))]
    for name in names:
        assert sum(1 for ln in lines if ln.split()[1:2] == [name]) == 1, name
    assert code == 0 and lines[-1].startswith("ready for miso run")


def test_version_without_driver(cli, fake_driver) -> None:
    fake_driver["error"] = NoGpu("no NVIDIA driver")
    code, out, _ = cli("--version")
    assert code == 0
    from miso_cli import __version__

    lines = out.splitlines()
    assert lines[0] == f"miso {__version__}"
    assert lines[1].startswith("nvidia-ml-py ")
    assert lines[2] == "NVIDIA driver none found"


def test_version_with_driver(cli, fake_driver) -> None:
    code, out, _ = cli("--version")
    assert code == 0
    assert out.splitlines()[2] == "NVIDIA driver 550.54.15 (NVML 12.550.54.15)"
    assert fake_driver["specs"] == [None]  # the real driver, whatever MISO_GPU says


def test_doctor_on_simulated_gpu(cli) -> None:
    pytest.importorskip("miso_cli.gpu.nvml")
    code, out, err = cli("doctor", "--gpu", "sim:a100-40gb", "--json")
    env = parse_envelope(out)
    checks = {c["name"]: c for c in env["data"]["checks"]}
    assert checks["driver"]["status"] == "ok"
    assert "simulated" in checks["driver"]["message"]
    assert checks["gpu0"]["status"] in ("ok", "warn")
    assert checks["permission"]["status"] == "ok"
    # Nothing about a simulated GPU blocks miso run.
    assert code == 0, err
    assert env["data"]["ready"] is True


def test_simulated_gpu_without_privilege(cli, monkeypatch) -> None:
    pytest.importorskip("miso_cli.gpu.nvml")
    monkeypatch.setenv("MISO_SIM_PRIVILEGED", "0")
    code, out, _ = cli("doctor", "--gpu", "sim:a100-40gb", "--json")
    env = parse_envelope(out)
    checks = {c["name"]: c for c in env["data"]["checks"]}
    assert checks["permission"]["status"] == "fail"
    assert code == int(ExitCode.PERMISSION)
    assert env["errors"][0]["code"] == "PERMISSION"


class LazyNoDriver(FakeDriver):
    """Like the real driver on a machine without NVML: opening works, the first call fails."""

    def device_count(self) -> int:
        raise NoGpu("no NVIDIA driver found: NVML could not be loaded", hint="install it")

    def driver_version(self) -> str | None:
        raise NoGpu("no NVIDIA driver found: NVML could not be loaded")


def test_no_driver_prints_the_whole_checklist(cli, fake_driver) -> None:
    fake_driver["driver"] = LazyNoDriver()
    code, out, err = cli("doctor")
    assert code == int(ExitCode.NO_GPU)
    rows = [ln.split()[:2] for ln in out.splitlines() if ln.strip()]
    names = [name for _, name in rows]
    assert names[:7] == [
        "python",
        "packages",
        "driver",
        "binding",
        "gpus",
        "permission",
        "processes",
    ]
    assert {"mps-control", "state-dir", "model"} <= set(names)
    marks = {name: mark for mark, name in rows}
    assert all(marks[n] == "FAIL" for n in ("driver", "gpus", "permission", "processes"))
    assert marks["python"] == "ok"
    assert "NVML could not be loaded" in out and "ready for miso run" not in out
    assert fake_driver["driver"].closed
    code, out, _ = cli("doctor", "--json")
    env = parse_envelope(out)
    assert [e["code"] for e in env["errors"]] == ["NO_GPU"]  # one blocking finding: the driver
    assert len(env["data"]["checks"]) >= 10


def test_a_fitted_model_kept_aside_says_so(state_dir: Path) -> None:
    import json

    models = state_dir / "models"
    models.mkdir(parents=True)
    (models / "a100-40gb.joblib").write_bytes(b"")
    sel = {"chosen": "prior", "mape": {"prior": {"mean": 0.1}, "fitted": {"mean": 0.16}}}
    doc = {"metadata": {"gpu_model": "a100-40gb", "selection": sel}, "rows": []}
    (models / "a100-40gb.joblib.json").write_text(json.dumps(doc))
    check = doctor.check_model(state_dir, "a100-40gb")
    assert check.status == "warn" and "kept aside" in check.message
    assert "prior 10.0%" in check.message and "fitted 16.0%" in check.message


@pytest.mark.parametrize(("exit_code", "status"), [(0, "ok"), (1, "warn")])
def test_mig_parted_row_where_the_tool_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int, status: str
) -> None:
    """With nvidia-mig-parted on PATH, doctor has it read the current layout as a config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-mig-parted"
    tool.write_text(f'#!/bin/sh\necho checked "$@" >&2\nexit {exit_code}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    checks = _by_name(doctor.run_checks("sim:a100-40gb", tmp_path / "state"))
    assert checks["mig-parted"].status == status
    assert "nvidia-mig-parted" in checks["mig-parted"].message


def test_no_mig_parted_row_without_the_tool(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-mig-parted here
    checks = _by_name(doctor.run_checks("sim:a100-40gb", tmp_path / "state"))
    assert "mig-parted" not in checks
