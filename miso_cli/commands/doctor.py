"""``miso doctor``: is this machine ready for ``miso run``, and if not, what to do.

Each check is data (:class:`Check`): a name, a status (``ok``, ``warn``,
``fail``), a one-line message and, where there is one, a fix. A ``fail`` that
keeps ``miso run`` from working names the exit code it stands for (NO_GPU,
PERMISSION, ...); :func:`exit_code` picks the one the command exits with.

Checks never raise: whatever goes wrong while checking becomes a check that
says so (missing values are data). Heavy libraries are imported only here,
inside the checks that need them.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli import __version__
from miso_cli.errors import ExitCode, MisoError

OK, WARN, FAIL = "ok", "warn", "fail"

# Packages miso imports at run time (distribution name, what it is needed for).
REQUIRED_PACKAGES: tuple[tuple[str, str], ...] = (
    ("typer", "the command line"),
    ("rich", "human output"),
    ("nvidia-ml-py", "talking to the driver"),
    ("psutil", "watching job processes"),
    ("scikit-learn", "the slice-speed predictor"),
    ("joblib", "saving fitted models"),
)
# The oldest driver branch with MIG (R450, A100 launch).
MIG_MIN_DRIVER = (450, 80)
MODEL_STALE_DAYS = 30
MPS_CONTROL = "nvidia-cuda-mps-control"


@dataclass
class Check:
    """One finding: what was checked, how it stands, and what to do about it."""

    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str | None = None
    blocks: ExitCode | None = None  # set on a fail that keeps `miso run` from working

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "blocks_run": self.blocks is not None,
            "exit_code": self.blocks.name if self.blocks is not None else None,
        }


# -- versions ---------------------------------------------------------------------


def package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def version_info() -> dict[str, str | None]:
    """miso's version, the NVML binding's and the real driver's (None: no driver)."""
    info: dict[str, str | None] = {
        "miso": __version__,
        "nvidia-ml-py": package_version("nvidia-ml-py"),
        "driver": None,
        "nvml": None,
    }
    drv = None
    try:
        from miso_cli.gpu.nvml import open_driver
        from miso_cli.runtime.state import default_state_dir

        drv = open_driver(None, default_state_dir())
        info["driver"] = drv.driver_version()
        info["nvml"] = drv.nvml_version()
    except Exception:  # no library, no driver, no GPU: all mean "no driver" here
        pass
    finally:
        if drv is not None:
            try:
                drv.close()
            except Exception:
                pass
    return info


def version_text() -> str:
    """What ``miso --version`` prints."""
    v = version_info()
    binding = v["nvidia-ml-py"] or "not installed"
    driver = v["driver"] or "none found"
    if v["driver"] and v["nvml"]:
        driver += f" (NVML {v['nvml']})"
    return f"miso {v['miso']}\nnvidia-ml-py {binding}\nNVIDIA driver {driver}"


def _version_tuple(text: str | None) -> tuple[int, ...]:
    out = []
    for part in (text or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


# -- the checks -------------------------------------------------------------------


def check_python() -> Check:
    v = sys.version_info
    text = f"Python {platform.python_version()} ({sys.executable})"
    if (v.major, v.minor) < (3, 10):
        return Check("python", FAIL, text, "miso needs Python 3.10 or newer", ExitCode.FAILURE)
    return Check("python", OK, text)


def check_packages() -> Check:
    found, missing = [], []
    for dist, why in REQUIRED_PACKAGES:
        ver = package_version(dist)
        if ver is None:
            missing.append(f"{dist} ({why})")
        else:
            found.append(f"{dist} {ver}")
    message = f"miso {__version__}; " + ", ".join(found)
    if missing:
        return Check(
            "packages",
            FAIL,
            "missing: " + ", ".join(missing),
            "reinstall miso: pip install --force-reinstall miso-cli",
            ExitCode.FAILURE,
        )
    return Check("packages", OK, message)


def _driver_checks(drv: Any, spec: str | None) -> list[Check]:
    checks: list[Check] = []
    simulated = bool(getattr(drv, "is_simulated", False))
    driver = _safe(drv.driver_version)
    nvml = _safe(drv.nvml_version)
    where = f"simulated GPUs ({spec})" if simulated else "NVML"
    checks.append(
        Check(
            "driver",
            OK,
            f"{where}: driver {driver or 'n/a'}, NVML {nvml or 'n/a'}",
        )
    )
    checks.append(_check_binding(driver, simulated))
    dv = _version_tuple(driver)
    if dv and dv[:2] < MIG_MIN_DRIVER and not simulated:
        checks.append(
            Check(
                "driver-mig",
                FAIL,
                f"driver {driver} predates MIG support (R{MIG_MIN_DRIVER[0]}.{MIG_MIN_DRIVER[1]})",
                "install a current NVIDIA datacenter driver",
                ExitCode.NO_GPU,
            )
        )
    return checks


def _check_binding(driver: str | None, simulated: bool) -> Check:
    binding = package_version("nvidia-ml-py")
    if binding is None:
        return Check(
            "binding",
            FAIL,
            "nvidia-ml-py is not installed",
            "pip install nvidia-ml-py",
            ExitCode.NO_GPU,
        )
    if simulated:
        return Check("binding", OK, f"nvidia-ml-py {binding} (the simulated NVML uses its types)")
    bv, dv = _version_tuple(binding), _version_tuple(driver)
    # nvidia-ml-py is versioned <CUDA major>.<driver branch>.<n>: 12.535.133 matches R535.
    if len(bv) >= 2 and dv:
        branch, drv_branch = bv[1], dv[0]
        if branch < drv_branch:
            return Check(
                "binding",
                WARN,
                f"nvidia-ml-py {binding} is older than driver R{drv_branch}: newer MIG profiles "
                "and calls may be unknown to it",
                "pip install -U nvidia-ml-py",
            )
        return Check(
            "binding",
            OK,
            f"nvidia-ml-py {binding} (branch {branch}) with driver R{drv_branch}: calls the "
            "driver lacks fail as 'function not found' and miso falls back",
        )
    return Check("binding", OK, f"nvidia-ml-py {binding}, driver {driver or 'n/a'}")


def _gpu_checks(drv: Any) -> list[Check]:
    checks: list[Check] = []
    count = drv.device_count()
    if count == 0:
        return [
            Check(
                "gpus",
                FAIL,
                "the driver reports no GPU",
                "check nvidia-smi; use --gpu sim:a100-40gb to try miso on a simulated GPU",
                ExitCode.NO_GPU,
            )
        ]
    any_mig = False
    for i in range(count):
        name = f"gpu{i}"
        try:
            info = drv.gpu(i)
        except MisoError as exc:
            checks.append(Check(name, FAIL, exc.message, exc.hint, exc.exit_code))
            continue
        label = f"{info.name} ({info.uuid})"
        if not info.mig_capable:
            checks.append(
                Check(
                    name,
                    WARN,
                    f"{label}: not MIG-capable; miso can still run jobs on it as a whole GPU",
                )
            )
            continue
        any_mig = True
        cur = "on" if info.mig_current else "off"
        pend = "on" if info.mig_pending else "off"
        if info.mig_current != info.mig_pending:
            checks.append(
                Check(
                    name,
                    WARN,
                    f"{label}: MIG mode {cur}, {pend} pending until the GPU is reset",
                    f"stop the GPU's clients, then: sudo nvidia-smi -r -i {i} (or reboot)",
                )
            )
        else:
            checks.append(Check(name, OK, f"{label}: MIG-capable, MIG mode {cur}"))
    if not any_mig:
        checks.append(
            Check(
                "mig",
                WARN,
                "no MIG-capable GPU: layouts cannot be applied here",
                "use --policy nopart, or a MIG-capable GPU (A30, A100, H100, H200, B200)",
            )
        )
    return checks


def _permission_check(drv: Any) -> Check:
    """Whether MIG changes are allowed: a privileged, read-only NVML call answers it."""
    from miso_cli.errors import PermissionDenied

    tried = False
    for i in range(drv.device_count()):
        try:
            info = drv.gpu(i)
        except MisoError:
            continue
        if not (info.mig_capable and info.mig_current):
            continue
        tried = True
        try:
            drv.current_layout(i)  # lists GPU instances: NO_PERMISSION without privileges
        except PermissionDenied as exc:
            return Check(
                "permission",
                FAIL,
                f"MIG changes are not allowed: {exc.message}",
                exc.hint or "run miso with sudo (jobs still run as you)",
                ExitCode.PERMISSION,
            )
        except MisoError:
            continue
        return Check("permission", OK, "MIG instances can be listed and changed")
    if getattr(drv, "is_simulated", False):
        if os.environ.get("MISO_SIM_PRIVILEGED") == "0" or not _sim_privileged(drv):
            return Check(
                "permission",
                FAIL,
                "the simulated GPU denies MIG changes (MISO_SIM_PRIVILEGED=0, or "
                "'privileged': false in its state file)",
                "unset MISO_SIM_PRIVILEGED, or set 'privileged' back to true",
                ExitCode.PERMISSION,
            )
        return Check("permission", OK, "the simulated GPU allows MIG changes")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Check("permission", OK, "running as root: MIG changes are allowed")
    what = "no GPU has MIG mode on to test with; " if not tried else ""
    return Check(
        "permission",
        WARN,
        f"{what}enabling MIG mode and creating instances need root",
        "run miso apply/run with sudo (jobs still run as the invoking user)",
    )


def _sim_privileged(drv: Any) -> bool:
    """The simulated GPUs' ``privileged`` flag (True when it cannot be read)."""
    path = getattr(drv, "sim_state_path", None)
    if not path:
        return True
    try:
        import json

        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return bool(state.get("privileged", True)) if isinstance(state, dict) else True


def _process_check(drv: Any, state_dir: Path) -> Check:
    procs: list[tuple[int, int]] = []
    for i in range(drv.device_count()):
        try:
            for p in drv.processes(i):
                procs.append((i, p.pid))
        except MisoError:
            continue
    if not procs:
        return Check("processes", OK, "no process is using the GPUs")
    leaders = _journal_pids(state_dir)
    foreign = [(i, pid) for i, pid in procs if not _is_own(pid, leaders)]
    if not foreign:
        return Check("processes", OK, f"{len(procs)} process(es) on the GPUs, all miso's jobs")
    shown = ", ".join(f"pid {pid} {_proc_name(pid)}on GPU {i}" for i, pid in foreign[:5])
    more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
    return Check(
        "processes",
        WARN,
        f"processes not started by miso: {shown}{more}",
        "they hold their MIG instances (miso will not destroy those); stop them before "
        "changing the layout, or pass --force to apply",
    )


def _journal_pids(state_dir: Path) -> set[int]:
    """Process groups of the jobs the latest ``miso run`` started (their wrappers lead them)."""
    try:
        from miso_cli.runtime.journal import Journal

        run_id = Journal.latest_id(state_dir)
        if run_id is None:
            return set()
        journal = Journal.open(state_dir, run_id)
        return {int(r.pid) for r in journal.jobs.values() if r.pid and r.active}
    except Exception:  # no journal module, or an unreadable journal: nothing is known
        return set()


def _is_own(pid: int, leaders: set[int]) -> bool:
    if pid in leaders:
        return True
    try:
        return os.getpgid(pid) in leaders
    except OSError:
        return False


def _proc_name(pid: int) -> str:
    try:
        import psutil

        return f"({psutil.Process(pid).name()}) "
    except Exception:
        return ""


def check_mps(simulated: bool) -> list[Check]:
    checks = []
    binary = shutil.which(MPS_CONTROL)
    if binary:
        checks.append(Check("mps-control", OK, f"{MPS_CONTROL} at {binary}"))
    elif simulated:
        checks.append(
            Check(
                "mps-control",
                OK,
                f"{MPS_CONTROL} not on PATH; the simulated GPU uses miso's stand-in",
            )
        )
    else:
        checks.append(
            Check(
                "mps-control",
                WARN,
                f"{MPS_CONTROL} is not on PATH: co-located profiling (miso profile) cannot run",
                "install the NVIDIA driver's utilities (the package that ships nvidia-smi) "
                "or add their directory to PATH",
            )
        )
    checks.append(_mps_daemon_check())
    return checks


def _mps_daemon_check() -> Check:
    running = []
    try:
        import psutil

        for proc in psutil.process_iter(["pid", "name", "username"]):
            name = proc.info.get("name") or ""
            if name in (MPS_CONTROL, "nvidia-cuda-mps-server"):
                running.append(f"{name} pid {proc.info['pid']} ({proc.info.get('username')})")
    except Exception as exc:  # psutil missing or /proc unreadable
        return Check("mps-daemon", WARN, f"could not list processes: {exc}")
    pipe_dir = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    stale = (pipe_dir / "control").exists() and not running
    if running:
        return Check(
            "mps-daemon",
            WARN,
            "an MPS daemon is already running: " + "; ".join(running),
            "miso starts its own daemon with a private pipe directory; clients of another "
            "user's daemon wait for it. Stop it with: echo quit | nvidia-cuda-mps-control",
        )
    if stale:
        return Check(
            "mps-daemon",
            WARN,
            f"no MPS daemon runs, but {pipe_dir} holds a control pipe (left by a crash?)",
            f"remove {pipe_dir} if no daemon uses it",
        )
    return Check("mps-daemon", OK, "no MPS daemon is running")


def check_state_dir(state_dir: Path) -> Check:
    path = Path(state_dir)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not path.exists():
        if os.access(probe, os.W_OK):
            return Check("state-dir", OK, f"{path} does not exist yet; miso will create it")
        return Check(
            "state-dir",
            FAIL,
            f"{path} does not exist and {probe} is not writable",
            "pass --state-dir or set MISO_STATE_DIR to a writable directory",
            ExitCode.PERMISSION,
        )
    if not path.is_dir():
        return Check(
            "state-dir",
            FAIL,
            f"{path} is not a directory",
            "pass --state-dir or set MISO_STATE_DIR to a directory",
            ExitCode.BAD_INPUT,
        )
    if not os.access(path, os.W_OK | os.X_OK):
        return Check(
            "state-dir",
            FAIL,
            f"{path} is not writable",
            f"fix its owner (sudo chown -R $USER {path}) or pass --state-dir",
            ExitCode.PERMISSION,
        )
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return Check(
            "state-dir",
            WARN,
            f"{path} is writable by group or others (mode {mode:04o}): saved models in it "
            "will be refused",
            f"chmod go-w {path}",
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return Check(
            "state-dir",
            WARN,
            f"{path} belongs to uid {st.st_uid}, not to you",
            "use your own state directory (--state-dir) unless this is intended",
        )
    return Check("state-dir", OK, f"{path} (mode {mode:04o})")


def check_model(state_dir: Path, gpu_model_key: str | None) -> Check:
    """The fitted predictor and its age; the shipped prior stands in when there is none."""
    meta, path = _fitted_model(state_dir, gpu_model_key)
    if path is None:
        return Check(
            "model",
            WARN,
            "no fitted model: predictions use the shipped prior",
            "fit one on this GPU: miso calibrate (or miso fit PAIRS.csv)",
        )
    age_days = (time.time() - path.stat().st_mtime) / 86400
    what = f"{path.name}, {age_days:.0f} day(s) old"
    if meta:
        extra = [f"{k} {meta[k]}" for k in ("gpu_model", "sklearn_version") if meta.get(k)]
        if extra:
            what += " (" + ", ".join(extra) + ")"
    sel = meta.get("selection") if isinstance(meta.get("selection"), dict) else None
    if sel and sel.get("chosen") == "prior":
        from miso_cli.predict.selection import summary_line

        return Check(
            "model",
            WARN,
            f"fitted model {what} is kept aside: it is not better than the shipped prior "
            f"({summary_line(sel)}); predictions use the prior",
            "calibrate with more workload families (miso calibrate --queue), then miso fit",
        )
    if sel and sel.get("chosen") == "blend":
        what += "; predictions blend it with the shipped prior (better on held-out rows)"
    if age_days > MODEL_STALE_DAYS:
        return Check(
            "model",
            WARN,
            f"fitted model {what}: older than {MODEL_STALE_DAYS} days",
            "refit after driver or workload changes: miso calibrate",
        )
    return Check("model", OK, f"fitted model {what}")


def _fitted_model(state_dir: Path, gpu_model_key: str | None) -> tuple[dict[str, Any], Path | None]:
    """(metadata, file) of the fitted model ``miso fit`` keeps in the state dir
    (``models/<gpu model>.joblib`` and its ``.json`` sidecar), read without unpickling."""
    models = Path(state_dir) / "models"
    if not models.is_dir():
        return {}, None
    files = sorted(p for p in models.glob("*.joblib") if p.is_file())
    if gpu_model_key:
        files = [p for p in files if p.stem == gpu_model_key] or files
    if not files:
        return {}, None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    meta: dict[str, Any] = {}
    side = newest.with_name(newest.name + ".json")
    try:
        import json

        loaded = json.loads(side.read_text(encoding="utf-8"))
        found = loaded.get("metadata") if isinstance(loaded, dict) else None
        meta = found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        pass
    return meta, newest


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


# -- all together -----------------------------------------------------------------


def run_checks(gpu_spec: str | None, state_dir: Path) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [check_python(), check_packages()]
    simulated = bool(gpu_spec and gpu_spec.startswith("sim:"))
    gpu_model_key: str | None = None
    drv = None
    try:
        from miso_cli.gpu.nvml import open_driver

        drv = open_driver(gpu_spec, state_dir)
    except ImportError as exc:
        checks.append(
            Check("driver", FAIL, f"miso's driver layer is missing: {exc}", None, ExitCode.FAILURE)
        )
    except MisoError as exc:
        checks.append(Check("driver", FAIL, exc.message, exc.hint, exc.exit_code))
    except Exception as exc:  # an unexpected driver answer is a finding, not a crash
        checks.append(Check("driver", FAIL, f"{type(exc).__name__}: {exc}", None, ExitCode.NO_GPU))
    if drv is not None:
        # The real driver loads NVML on its first call: probe it, so a machine without a
        # driver still gets the whole checklist, with the rows that need the driver failing.
        probe = _probe(drv)
        if probe is not None:
            _safe(drv.close)
            checks += _no_driver_checks(probe)
            drv = None
    if drv is not None:
        try:
            simulated = bool(getattr(drv, "is_simulated", simulated))
            checks += _driver_checks(drv, gpu_spec)
            checks += _guard("gpus", lambda: _gpu_checks(drv))
            checks += _guard("permission", lambda: [_permission_check(drv)])
            checks += _guard("processes", lambda: [_process_check(drv, state_dir)])
            checks += _guard("mig-parted", lambda: _mig_parted_check(drv))
            if drv.device_count():
                gpu_model_key = _safe(lambda: drv.gpu(0).model_key)
        finally:
            _safe(drv.close)
    checks += check_mps(simulated)
    checks.append(check_state_dir(state_dir))
    checks.append(check_model(state_dir, gpu_model_key))
    return checks


def _mig_parted_check(drv: Any) -> list[Check]:
    """Where nvidia-mig-parted is installed, it must accept the current layout as a config."""
    from miso_cli.export.handoff import doctor_mig_parted_check

    r = doctor_mig_parted_check(drv)
    if r["ok"] is None:  # not installed: nothing to check
        return []
    if r["ok"]:
        return [Check("mig-parted", OK, r["message"])]
    return [
        Check(
            "mig-parted",
            WARN,
            r["message"],
            "compare with: miso export --format mig-parted (docs/export.md)",
        )
    ]


def _probe(drv: Any) -> Check | None:
    """None when the driver answers; else the failing ``driver`` check."""
    try:
        drv.device_count()
    except MisoError as exc:
        return Check("driver", FAIL, exc.message, exc.hint, exc.exit_code)
    except Exception as exc:  # an unexpected driver answer is a finding, not a crash
        return Check("driver", FAIL, f"{type(exc).__name__}: {exc}", None, ExitCode.NO_GPU)
    return None


def _no_driver_checks(driver: Check) -> list[Check]:
    """The rows that need the driver, when it cannot be loaded: each says why it fails."""
    why = "not checked: the NVIDIA driver is not loaded"
    return [
        driver,
        _check_binding(None, False),
        Check("gpus", FAIL, f"no GPU visible ({why})", driver.fix),
        Check("permission", FAIL, why, "fix the driver first"),
        Check("processes", FAIL, why, "fix the driver first"),
    ]


def _guard(name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except MisoError as exc:
        return [Check(name, FAIL, exc.message, exc.hint, exc.exit_code)]
    except Exception as exc:
        return [Check(name, FAIL, f"{type(exc).__name__}: {exc}", None, ExitCode.FAILURE)]


# Which blocking failure decides the exit code when there are several.
_PRECEDENCE = (ExitCode.NO_GPU, ExitCode.PERMISSION, ExitCode.BAD_INPUT, ExitCode.FAILURE)


def exit_code(checks: list[Check]) -> ExitCode:
    """OK unless a check blocks ``miso run``; then the most fundamental such code."""
    blocking = [c.blocks for c in checks if c.status == FAIL and c.blocks is not None]
    if not blocking:
        return ExitCode.OK
    for code in _PRECEDENCE:
        if code in blocking:
            return code
    return blocking[0]


@dataclass
class DoctorReport:
    """Every check, and what they say together: ready for ``miso run`` or not, and why."""

    checks: list[Check]

    @property
    def exit_code(self) -> ExitCode:
        return exit_code(self.checks)

    @property
    def ready(self) -> bool:
        return self.exit_code == ExitCode.OK

    @property
    def errors(self) -> list[dict[str, Any]]:
        """One error per check that blocks ``miso run``, with its fix as the hint."""
        errors = []
        for c in self.checks:
            if c.status == FAIL and c.blocks is not None:
                err = {"code": c.blocks.name, "message": f"{c.name}: {c.message}"}
                if c.fix:
                    err["hint"] = c.fix
                errors.append(err)
        return errors

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso doctor --json``."""
        return {"ready": self.ready, "checks": [c.to_json() for c in self.checks]}


def doctor(gpu_spec: str | None, state_dir: Path) -> DoctorReport:
    """``miso doctor``: run every check against ``gpu_spec`` and ``state_dir``."""
    return DoctorReport(run_checks(gpu_spec, state_dir))
