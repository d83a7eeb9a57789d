"""Starting, signalling and finding job processes.

Every job runs under :mod:`miso_cli.runtime.jobwrap` in a new session (its own process
group, out of reach of the terminal's Ctrl-C), with stdout and stderr appended
to its log file. miso signals the wrapper, which forwards to the job (so a
checkpoint signal reaches the training process, not its data-loader workers);
killing is done to the whole group. Under ``sudo`` the job runs as the user who
invoked it, never as root.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.spec.queue import JobSpec, expand


@dataclass(frozen=True)
class RunAs:
    """The identity a job takes when miso runs as root on behalf of a user."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str
    home: str


def run_as_from_env(
    environ: Mapping[str, str],
    euid: int,
    *,
    getpwuid: Callable[[int], Any] = pwd.getpwuid,
    getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist,
) -> RunAs | None:
    """Who jobs should run as: the ``sudo`` caller when miso is root under sudo, else None.

    Only when the effective uid is 0 and ``SUDO_UID`` names a non-root user; a
    root login without sudo runs jobs as root, as asked.
    """
    if euid != 0:
        return None
    raw_uid = environ.get("SUDO_UID", "").strip()
    if not raw_uid.isdigit() or int(raw_uid) == 0:
        return None
    uid = int(raw_uid)
    raw_gid = environ.get("SUDO_GID", "").strip()
    try:
        pw = getpwuid(uid)
        name, home, pw_gid = pw.pw_name, pw.pw_dir, pw.pw_gid
    except KeyError:
        name, home, pw_gid = environ.get("SUDO_USER", str(uid)), "/", uid
    gid = int(raw_gid) if raw_gid.isdigit() else int(pw_gid)
    try:
        groups = tuple(sorted(set(getgrouplist(name, gid))))
    except (KeyError, OSError):
        groups = (gid,)
    return RunAs(uid, gid, groups, name, home)


def prepare_job_files(
    run_dir: Path, job_dir: Path, ckpt: Path, progress_file: Path, run_as: RunAs | None
) -> None:
    """Make the job's checkpoint folder and progress file; under sudo, hand them over.

    ``job_dir`` is the user's once handed over, so its job may have planted a symlink
    or hard link at any name in it by the next attempt: nothing here follows one
    (see :mod:`miso_cli.safefs`), and ownership changes go through descriptors.
    """
    from miso_cli.safefs import chown_dir, touch_owned

    job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        st = os.lstat(ckpt)
        if not (stat.S_ISDIR(st.st_mode)):  # a planted symlink or file: it is not ours
            os.unlink(ckpt)
            raise FileNotFoundError
    except FileNotFoundError:
        os.mkdir(ckpt, 0o700)
    if run_as is None:
        touch_owned(progress_file, None, None)
        return
    for d in (run_dir.parent.parent, run_dir.parent, run_dir, run_dir / "jobs"):
        try:
            os.chmod(d, 0o711)  # traverse, not list (root's own folders)
        except OSError:
            pass
    chown_dir(job_dir, run_as.uid, run_as.gid)
    chown_dir(ckpt, run_as.uid, run_as.gid)
    touch_owned(progress_file, run_as.uid, run_as.gid)


@dataclass
class Launched:
    pid: int
    create_time: float | None
    popen: subprocess.Popen[bytes] | None
    log_offset: int  # where this attempt's output starts in the log


def job_argv(job: JobSpec, *, resume: bool, values: dict[str, Any]) -> list[str] | str:
    """The command to run: the queue's, plus the resume arguments when resuming."""
    extra: list[str] = []
    if resume and job.checkpoint is not None:
        extra = [expand(a, **values) for a in job.checkpoint.resume_args]
    if job.shell:
        assert isinstance(job.command, str)
        if extra:
            import shlex

            return job.command + " " + " ".join(shlex.quote(a) for a in extra)
        return job.command
    assert isinstance(job.command, list)
    return list(job.command) + extra


def job_env(
    job: JobSpec,
    *,
    base: Mapping[str, str],
    device: str,
    attempt: int,
    resume: bool,
    values: dict[str, Any],
    extra: Mapping[str, str],
    run_as: RunAs | None,
) -> dict[str, str]:
    """The job's environment: miso's, the queue's ``env``, the device, miso's variables."""
    env = dict(base)
    env.update(job.env)
    env["CUDA_VISIBLE_DEVICES"] = device
    env["MISO_JOB"] = job.name
    env["MISO_ATTEMPT"] = str(attempt)
    env["MISO_CHECKPOINT_SIGNAL"] = signal.Signals(job.stop_signal).name
    env["PYTHONUNBUFFERED"] = env.get("PYTHONUNBUFFERED", "1")  # progress lines arrive live
    if resume:
        env["MISO_RESUME"] = "1"
        if job.checkpoint is not None:
            env.update({k: expand(v, **values) for k, v in job.checkpoint.resume_env.items()})
    else:
        env.pop("MISO_RESUME", None)
    env.update(extra)
    if run_as is not None:
        env.update({"HOME": run_as.home, "USER": run_as.user, "LOGNAME": run_as.user})
        for key in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "MAIL"):
            env.pop(key, None)
    return env


def launch(
    job: JobSpec,
    *,
    argv: list[str] | str,
    env: dict[str, str],
    log_path: Path,
    exit_file: Path,
    tag: str,
    header: str,
    run_as: RunAs | None = None,
) -> Launched:
    """Start ``argv`` under the wrapper, in its own session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        exit_file.unlink()
    except FileNotFoundError:
        pass
    wrapper = [sys.executable, "-m", "miso_cli.runtime.jobwrap", "--exit-file", str(exit_file)]
    wrapper += ["--tag", tag]
    if run_as is not None:
        wrapper += ["--uid", str(run_as.uid), "--gid", str(run_as.gid)]
        wrapper += ["--groups", ",".join(str(g) for g in run_as.groups)]
    if job.shell:
        wrapper += ["--shell", "--", str(argv)]
    else:
        wrapper += ["--", *argv]
    # The wrapper must find miso_cli even when the job's cwd is elsewhere.
    pkg_root = str(Path(__file__).resolve().parents[2])
    wenv = dict(env)
    wenv["PYTHONPATH"] = pkg_root + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    with open(log_path, "ab") as log:
        log.write(header.encode("utf-8", errors="replace"))
        log.flush()
        offset = log.tell()
        popen = subprocess.Popen(
            wrapper,
            cwd=job.cwd,
            env=wenv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return Launched(popen.pid, create_time(popen.pid), popen, offset)


def create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def is_alive(pid: int | None, created: float | None) -> bool:
    """Whether ``pid`` is still the process we started (not a reused pid, not a zombie)."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def send(pid: int, signum: int) -> bool:
    """Send ``signum`` to the wrapper (which forwards it to the job)."""
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(pid: int) -> bool:
    """SIGKILL the job's whole process group (the wrapper leads it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read_exit(path: Path) -> dict[str, Any] | None:
    """The exit record the wrapper wrote, or None while the job runs (or if it was killed).

    Read without following a symlink: the folder may be the job's user's.
    """
    from miso_cli.safefs import open_file

    try:
        fd = open_file(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_wrapper(tag: str) -> tuple[int, float] | None:
    """A running wrapper started with ``--tag tag`` (found again after miso crashed)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmd = proc.info.get("cmdline") or []
        if "miso_cli.runtime.jobwrap" in cmd and "--tag" in cmd:
            i = cmd.index("--tag")
            if i + 1 < len(cmd) and cmd[i + 1] == tag:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return proc.pid, float(proc.info["create_time"])
    return None


class TreeWatcher:
    """CPU and memory of each job's process tree, sampled with one pass over /proc."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process (cpu_percent keeps state)

    def sample(self, roots: Mapping[str, int]) -> dict[str, dict[str, float]]:
        import psutil

        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid:
                children.setdefault(ppid, []).append(proc.pid)
        out: dict[str, dict[str, float]] = {}
        seen: set[int] = set()
        for job, root in roots.items():
            stack, tree = [root], []
            while stack:
                pid = stack.pop()
                tree.append(pid)
                stack.extend(children.get(pid, ()))
            cpu = rss = 0.0
            for pid in tree:
                proc = self._procs.get(pid)
                try:
                    if proc is None:
                        proc = self._procs[pid] = psutil.Process(pid)
                        proc.cpu_percent(None)
                        cpu_now = 0.0
                    else:
                        cpu_now = proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                    cpu += cpu_now
                    seen.add(pid)
                except (psutil.Error, OSError):
                    self._procs.pop(pid, None)
            out[job] = {"cpu_percent": cpu, "rss_mb": rss / 2**20, "processes": len(tree)}
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        return out
