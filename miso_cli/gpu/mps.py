"""miso's own MPS control daemon, one per GPU or per MIG instance.

``nvidia-cuda-mps-control -d`` starts a control daemon that daemonizes, writes
``nvidia-cuda-mps-control.pid`` and a Unix socket ``control`` into
``$CUDA_MPS_PIPE_DIRECTORY`` and logs ``control.log`` into
``$CUDA_MPS_LOG_DIRECTORY``; CUDA clients that find the socket at their own
``CUDA_MPS_PIPE_DIRECTORY`` run under it, others run without MPS. Commands go
to the daemon on the stdin of ``nvidia-cuda-mps-control`` (``quit``,
``get_server_list``, ...); with no daemon that prints ``Cannot find MPS
control daemon process`` and exits 1. The pid file disappears when the daemon
stops; the socket file stays. The daemon needs no root when its directories
are the caller's; which devices it serves is its ``CUDA_VISIBLE_DEVICES``
(a ``GPU-...`` or ``MIG-...`` UUID).

So miso gives each device a private pipe and log directory under its state
directory (``mps/<device>/pipe`` and ``.../log``) and never touches a daemon
someone else runs. A Unix socket path is limited to 107 bytes; when the state
directory is too deep for that, the pipe directory moves to a short path
under the temporary directory, and :class:`MpsDaemon` says so in its notes.

:class:`MpsDaemon` is a context manager: it refuses to start over a live
daemon on its pipe directory, clears a stale one (pid file of a dead process,
or a socket without pid file), and always stops what it started, on errors
and on Ctrl-C too (``quit``, then SIGTERM, then SIGKILL to the pid it
started). On a simulated GPU the control program is
:mod:`miso_cli.gpu.sim.sim_mps_control`, run through the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from miso_cli.errors import ExitCode, GpuBusy, MisoError, NoGpu
from miso_cli.runtime.pids import pid_running, process_uid

CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
SOCKET = "control"
SYSTEM_PIPE_DIR = Path("/tmp/nvidia-mps")  # where a daemon started without the variable lives
SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
NOT_FOUND = "Cannot find MPS control daemon process"


class MpsError(MisoError):
    """The MPS control daemon could not be started, reached or stopped."""

    code = "MPS"
    exit_code = ExitCode.NO_GPU


@dataclass(frozen=True)
class MpsDirs:
    pipe: Path
    log: Path
    moved: bool = False  # the pipe directory left the state dir (socket path too long)

    @property
    def pid_file(self) -> Path:
        return self.pipe / PID_FILE

    @property
    def socket(self) -> Path:
        return self.pipe / SOCKET


def _key(device: str) -> str:
    """A short, stable directory name for a device UUID (socket paths must be short)."""
    kind = "mig" if device.upper().startswith("MIG-") else "gpu"
    return f"{kind}-{hashlib.sha1(device.encode()).hexdigest()[:10]}"


def mps_dirs(state_dir: Path, device: str) -> MpsDirs:
    """The private pipe and log directories of miso's daemon for ``device``."""
    base = Path(state_dir).expanduser().resolve() / "mps" / _key(device)
    pipe = base / "pipe"
    if len(os.fsencode(pipe / SOCKET)) <= SUN_PATH_MAX:
        return MpsDirs(pipe, base / "log")
    digest = hashlib.sha1(str(base).encode()).hexdigest()[:12]
    return MpsDirs(_short_base() / digest, base / "log", moved=True)


def _short_base() -> Path:
    """Where pipe directories go when the state dir is too deep: a folder only this user
    can write (never a shared name in /tmp that another user could create first)."""
    explicit = os.environ.get("MISO_RUNTIME_DIR")
    if explicit:
        return Path(explicit) / "mps"
    if os.geteuid() == 0:
        return Path("/run/miso/mps")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and len(xdg) < 60:
        return Path(xdg) / "miso" / "mps"
    return Path(tempfile.gettempdir()) / f"miso-mps-{os.geteuid()}"


def _check_pipe_dir(dirs: MpsDirs) -> None:
    """The pipe directory and the folder above it are this user's and closed to others: a
    pipe directory someone else made could fake a daemon (and its pid) for miso to stop."""
    from miso_cli.safefs import UnsafePath, check_dir, private_dir

    try:
        if dirs.moved:
            private_dir(dirs.pipe.parent, what="MPS pipe folder")
        if os.path.lexists(dirs.pipe):
            check_dir(dirs.pipe, owners=(os.geteuid(),), what="MPS pipe directory")
    except UnsafePath as exc:
        raise MpsError(
            f"MPS pipe directory {exc.filename}: {exc.why}",
            hint="remove it (it is not miso's), or use a --state-dir of your own",
            exit_code=ExitCode.PERMISSION,
        ) from None
    except OSError as exc:
        raise MpsError(f"cannot create MPS directory {dirs.pipe}: {exc.strerror}") from None


def _holds_a_gpu_lock() -> bool:
    from miso_cli.runtime.locks import holds_any

    return holds_any()


def _alive(pid: int) -> bool:
    return pid_running(pid)


@dataclass(frozen=True)
class DaemonState:
    """What a pipe directory holds: a live daemon, leftovers of a dead one, or nothing."""

    pipe_dir: Path
    pid: int | None  # the live daemon's pid
    stale: bool  # files of a daemon that is gone
    stale_pid: int | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None


def inspect(pipe_dir: Path) -> DaemonState:
    """Look at ``pipe_dir`` without changing it."""
    from miso_cli.safefs import open_file

    pid_file = pipe_dir / PID_FILE
    try:
        fd = open_file(pid_file, os.O_RDONLY)  # a symlink is refused, never followed
        with os.fdopen(fd, "rb") as fh:
            owner = os.fstat(fh.fileno()).st_uid
            text = fh.read(64).decode(errors="replace").strip()
    except FileNotFoundError:
        leftovers = (pipe_dir / SOCKET).exists() or (pipe_dir / "control_lock").exists()
        return DaemonState(pipe_dir, None, leftovers)
    except OSError:
        return DaemonState(pipe_dir, None, True)
    try:
        pid = int(text)
    except ValueError:
        return DaemonState(pipe_dir, None, True)
    if not 0 < pid < 2**22:
        return DaemonState(pipe_dir, None, True)
    if owner != os.geteuid() or process_uid(pid) not in (None, os.geteuid()):
        return DaemonState(pipe_dir, None, True)  # not this user's daemon: never signalled
    if _alive(pid):
        return DaemonState(pipe_dir, pid, False)
    return DaemonState(pipe_dir, None, True, pid)


def control_command(simulated: bool) -> list[str]:
    """The control program: NVIDIA's from PATH, or the stand-in on a simulated GPU."""
    if simulated:
        return [sys.executable, str(Path(__file__).parent / "sim" / "sim_mps_control.py")]
    found = shutil.which(CONTROL)
    if found is None:
        raise NoGpu(
            f"{CONTROL} not found on PATH",
            hint="install the NVIDIA driver utilities (the package that ships nvidia-smi), "
            "or profile on a simulated GPU with --gpu sim:a100-40gb",
        )
    return [found]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass
class MpsDaemon:
    """miso's MPS control daemon for one device (``with MpsDaemon(...) as d:``).

    ``device`` is the UUID the daemon serves (``GPU-...`` or ``MIG-...``);
    ``control`` the control program (see :func:`control_command`);
    ``extra_env`` what the program needs besides (``MISO_SIM_STATE``).
    """

    dirs: MpsDirs
    device: str
    control: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 15.0
    notes: list[str] = field(default_factory=list)
    pid: int | None = None
    _started: bool = False

    # ------------------------------------------------------------ environment
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["CUDA_MPS_PIPE_DIRECTORY"] = str(self.dirs.pipe)
        env["CUDA_MPS_LOG_DIRECTORY"] = str(self.dirs.log)
        env["CUDA_VISIBLE_DEVICES"] = self.device
        if self.control and self.control[0] == sys.executable:
            # the stand-in imports miso_cli: make sure it finds this copy
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def client_env(self, active_thread_percentage: float | None = None) -> dict[str, str]:
        """Variables a job needs to run under this daemon with its share of the SMs."""
        env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.dirs.pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(self.dirs.log),
            "CUDA_VISIBLE_DEVICES": self.device,
        }
        if active_thread_percentage is not None:
            pct = float(active_thread_percentage)
            if not 0 < pct <= 100:
                raise ValueError(f"active-thread percentage must be in (0, 100], got {pct}")
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = f"{pct:g}"
        return env

    # ------------------------------------------------------------ control
    def command(self, text: str) -> str:
        """Send one command to the daemon; its answer (stripped)."""
        try:
            done = subprocess.run(
                self.control,
                input=text.rstrip("\n") + "\n",
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise MpsError(
                f"MPS control daemon at {self.dirs.pipe} did not answer {text!r} "
                f"within {self.timeout_s:g} s",
                hint=f"see {self.dirs.log / 'control.log'}",
            ) from None
        out = (done.stdout or "").strip()
        if done.returncode != 0 or NOT_FOUND in out:
            raise MpsError(
                f"MPS control daemon at {self.dirs.pipe} is not running "
                f"({(out or done.stderr or '').strip() or f'exit {done.returncode}'})",
                hint=f"see {self.dirs.log / 'control.log'}",
            )
        return out

    def alive(self) -> bool:
        """Whether the daemon this object started still runs (False after a crash)."""
        return self.pid is not None and _alive(self.pid) and self.dirs.pid_file.exists()

    def server_pids(self) -> list[int]:
        """``get_server_list``: the MPS servers the daemon runs."""
        return [int(w) for w in self.command("get_server_list").split() if w.isdigit()]

    # ------------------------------------------------------------ lifecycle
    def start(self) -> MpsDaemon:
        """Start the daemon; refuses a live one on the pipe directory, clears a stale one."""
        if self.dirs.moved:
            self.notes.append(
                f"the state directory is too deep for a Unix socket path; "
                f"MPS pipe directory is {self.dirs.pipe}"
            )
        _check_pipe_dir(self.dirs)
        state = inspect(self.dirs.pipe)
        if state.running and _holds_a_gpu_lock():
            # This process holds the GPU's lock, so no other miso drives this daemon: it is
            # what a killed miso left behind (its pid checked to be this user's daemon).
            leftover = MpsDaemon(self.dirs, self.device, self.control, self.extra_env)
            leftover._started, leftover.pid = True, state.pid
            leftover.stop(grace_s=min(self.timeout_s, 5.0))
            self.notes.append(
                f"stopped an MPS control daemon (pid {state.pid}) left on {self.dirs.pipe} "
                "by a miso that was killed"
            )
            state = inspect(self.dirs.pipe)
        if state.running:
            simulated = len(self.control) > 1 and self.control[0] == sys.executable
            program = "python -m miso_cli.gpu.sim.sim_mps_control" if simulated else CONTROL
            raise GpuBusy(
                f"an MPS control daemon (pid {state.pid}) already runs on {self.dirs.pipe}",
                hint="another miso is profiling this device, or one was killed; stop it with "
                f"'echo quit | CUDA_MPS_PIPE_DIRECTORY={self.dirs.pipe} {program}'",
            )
        if state.stale:
            who = f" of pid {state.stale_pid}" if state.stale_pid else ""
            self.notes.append(f"removed a stale MPS pipe directory{who} at {self.dirs.pipe}")
            shutil.rmtree(self.dirs.pipe, ignore_errors=True)
        system = inspect(SYSTEM_PIPE_DIR)
        if system.running and SYSTEM_PIPE_DIR.resolve() != self.dirs.pipe.resolve():
            self.notes.append(
                f"another MPS control daemon (pid {system.pid}) runs on {SYSTEM_PIPE_DIR}; "
                "its clients share the GPU with the profiled jobs"
            )
        for d in (self.dirs.pipe, self.dirs.log):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise MpsError(
                    f"cannot create MPS directory {d}: {exc.strerror}",
                    hint="check the permissions of the state directory (--state-dir)",
                ) from None
        try:
            done = subprocess.run(
                [*self.control, "-d"],
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            self._started = True  # it may have come up late: stop() will look
            self.stop()
            raise MpsError(
                f"{CONTROL} -d did not return within {self.timeout_s:g} s",
                hint=f"see {self.dirs.log / 'control.log'}",
            ) from None
        except OSError as exc:
            raise MpsError(f"cannot run {self.control[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout or "").strip() or _tail(self.dirs.log / "control.log")
            raise MpsError(
                f"{CONTROL} -d failed with exit {done.returncode} for {self.device}"
                + (f": {why}" if why else ""),
                hint=f"see {self.dirs.log / 'control.log'}",
            )
        self._started = True
        deadline = time.monotonic() + self.timeout_s
        while True:  # -d may return before the daemon wrote its pid file
            now = inspect(self.dirs.pipe)
            if now.running:
                self.pid = now.pid
                break
            if time.monotonic() > deadline:
                self.stop()
                raise MpsError(
                    f"the MPS control daemon for {self.device} did not come up "
                    f"within {self.timeout_s:g} s",
                    hint=f"see {self.dirs.log / 'control.log'}: "
                    f"{_tail(self.dirs.log / 'control.log')}",
                )
            time.sleep(0.05)
        try:
            self.command("get_server_list")
        except MpsError:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop what :meth:`start` started: ``quit``, then SIGTERM, then SIGKILL. Idempotent."""
        if not self._started:
            return
        with _sigint_deferred():
            pid = self.pid or inspect(self.dirs.pipe).pid
            if pid is not None and _alive(pid):
                with contextlib.suppress(MpsError):
                    self.command("quit")
                if not _wait_gone(pid, grace_s):
                    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, sig)
                        if _wait_gone(pid, wait):
                            break
                    self.notes.append(f"the MPS control daemon (pid {pid}) ignored quit; killed")
            elif self.pid is not None:
                self.notes.append(f"the MPS control daemon (pid {self.pid}) had died")
            # the daemon leaves its socket behind; a clean directory is no stale one
            shutil.rmtree(self.dirs.pipe, ignore_errors=True)
            self._started = False
            self.pid = None

    def __enter__(self) -> MpsDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        if time.monotonic() > deadline:
            return not _alive(pid)
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a second Ctrl-C until the daemon is down, then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if pending:
        raise KeyboardInterrupt


def open_daemon(
    state_dir: Path,
    device: str,
    *,
    simulated: bool,
    sim_state: Path | None = None,
    timeout_s: float = 15.0,
) -> MpsDaemon:
    """An (unstarted) daemon for ``device`` with miso's private directories."""
    extra = {"MISO_SIM_STATE": str(sim_state)} if simulated and sim_state else {}
    return MpsDaemon(
        dirs=mps_dirs(state_dir, device),
        device=device,
        control=control_command(simulated),
        extra_env=extra,
        timeout_s=timeout_s,
    )
