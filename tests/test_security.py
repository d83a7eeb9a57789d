"""The five attacks of a hostile job or local user on a miso running as root.

Each test plants what the attacker would (a symlink, a hard link, a folder, a pid
file) and checks root neither follows nor trusts it. Where the test runs as root,
the planting is done by a real unprivileged user (``nobody``, in a forked child
that drops to its uid); elsewhere the parts that need no second user still run,
and the rest is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from miso_cli.errors import PermissionDenied
from miso_cli.runtime import launch
from miso_cli.safefs import UnsafePath

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


def _other_user() -> pwd.struct_passwd | None:
    for name in ("nobody", "daemon"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid != os.geteuid():
            return pw
    return None


OTHER = _other_user()
needs_root = pytest.mark.skipif(
    not IS_ROOT or OTHER is None,
    reason="needs root and an unprivileged user (nobody) to act as the attacker",
)


def as_other(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a forked child as the unprivileged user; fail if it fails."""
    assert OTHER is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER.pw_gid)
            os.setuid(OTHER.pw_uid)
            fn()
            code = 0
        except BaseException as exc:
            print(f"as_other: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's step failed"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A scratch folder the other user can reach (pytest's own is private to us)."""
    base = Path(tempfile.mkdtemp(prefix="miso-sec-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _give(path: Path) -> None:
    assert OTHER is not None
    os.chown(path, OTHER.pw_uid, OTHER.pw_gid)


def _secret(tmp_path: Path) -> Path:
    """A root-owned (or own) private file that must stay untouched."""
    target = tmp_path / "secret"
    target.write_text("top secret\n")
    target.chmod(0o600)
    return target


def _unchanged(target: Path) -> None:
    st = target.stat()
    assert target.read_text() == "top secret\n"
    assert st.st_uid == os.geteuid()
    assert st.st_mode & 0o777 == 0o600


# ------------------------------------------------------------ 1. the job wrapper's exit file


def test_jobwrap_never_writes_through_a_symlink_the_job_planted(tmp_path: Path) -> None:
    """The job knows its wrapper's pid (its parent): it plants every name the wrapper
    could write, pointing at a root file, and the exit status still lands safely."""
    target = _secret(tmp_path)
    jobdir = tmp_path / "jobs" / "j"
    jobdir.mkdir(parents=True)
    exit_file = jobdir / "exit-1.json"
    plant = (
        f'ln -s {target} "{jobdir}/exit-1.json.$PPID.tmp"; '
        f'ln -s {target} "{jobdir}/exit-1.json"; exit 3'
    )
    argv = [sys.executable, "-m", "miso_cli.runtime.jobwrap", "--exit-file", str(exit_file)]
    if IS_ROOT and OTHER is not None:
        _give(jobdir)  # under sudo the job's folder is the user's
        argv += ["--uid", str(OTHER.pw_uid), "--gid", str(OTHER.pw_gid), "--groups", ""]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([*argv, "--", "sh", "-c", plant], env=env, capture_output=True)
    assert done.returncode == 3, done.stderr
    planted = [p for p in jobdir.iterdir() if p.is_symlink()]
    assert len(planted) == 1 and planted[0].name.endswith(".tmp")  # the attack was made
    _unchanged(target)
    assert not exit_file.is_symlink()
    assert json.loads(exit_file.read_text())["exit_code"] == 3
    assert launch.read_exit(exit_file)["exit_code"] == 3


def test_read_exit_does_not_follow_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text('{"exit_code": 0}')
    link = tmp_path / "exit-1.json"
    link.symlink_to(real)
    assert launch.read_exit(link) is None


# ------------------------------------------------------------ 2. progress.jsonl handed over


def _run_as() -> launch.RunAs:
    assert OTHER is not None
    return launch.RunAs(OTHER.pw_uid, OTHER.pw_gid, (OTHER.pw_gid,), OTHER.pw_name, "/")


def _job_files(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    run_dir = tmp_path / "state" / "runs" / "r1"
    job_dir = run_dir / "jobs" / "j"
    job_dir.mkdir(parents=True)
    return run_dir, job_dir, job_dir / "checkpoint", job_dir / "progress.jsonl"


@needs_root
def test_progress_file_symlink_is_not_chowned_through(tmp_path: Path) -> None:
    target = _secret(tmp_path)
    run_dir, job_dir, ckpt, progress = _job_files(tmp_path)
    launch.prepare_job_files(run_dir, job_dir, ckpt, progress, _run_as())  # attempt 1
    assert progress.stat().st_uid == OTHER.pw_uid  # type: ignore[union-attr]

    def plant() -> None:  # the job, as its user, before attempt 2
        progress.unlink()
        progress.symlink_to(target)
        os.rmdir(ckpt)
        ckpt.symlink_to(tmp_path)

    as_other(plant)
    launch.prepare_job_files(run_dir, job_dir, ckpt, progress, _run_as())  # attempt 2
    _unchanged(target)
    assert tmp_path.stat().st_uid == os.geteuid()
    assert not progress.is_symlink() and progress.stat().st_uid == OTHER.pw_uid  # type: ignore
    assert not ckpt.is_symlink() and ckpt.stat().st_uid == OTHER.pw_uid  # type: ignore


@needs_root
def test_progress_file_hard_link_is_refused(tmp_path: Path) -> None:
    target = _secret(tmp_path)
    run_dir, job_dir, ckpt, progress = _job_files(tmp_path)
    os.link(target, progress)  # (the kernel may stop a user doing this; root shows the case)
    with pytest.raises(UnsafePath, match="hard links"):
        launch.prepare_job_files(run_dir, job_dir, ckpt, progress, _run_as())
    _unchanged(target)


def test_progress_file_symlink_without_sudo_is_replaced_not_followed(tmp_path: Path) -> None:
    target = _secret(tmp_path)
    run_dir, job_dir, ckpt, progress = _job_files(tmp_path)
    progress.symlink_to(tmp_path / "created-elsewhere")
    launch.prepare_job_files(run_dir, job_dir, ckpt, progress, None)
    assert not (tmp_path / "created-elsewhere").exists()
    assert progress.is_file() and not progress.is_symlink()
    _unchanged(target)


# ------------------------------------------------------------ 3. the MPS pipe directory


def test_root_never_puts_its_mps_pipe_in_a_shared_tmp_name(tmp_path: Path, monkeypatch) -> None:
    from miso_cli.gpu import mps

    monkeypatch.delenv("MISO_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    dirs = mps.mps_dirs(deep, "GPU-x")
    assert dirs.moved
    if IS_ROOT:
        assert not dirs.pipe.is_relative_to(tempfile.gettempdir())
    else:
        assert f"-{os.geteuid()}" in str(dirs.pipe) or "XDG" in os.environ.get("XDG", "")


@needs_root
def test_a_pipe_folder_another_user_made_first_is_refused(tmp_path: Path, monkeypatch) -> None:
    from miso_cli.gpu import mps

    shared = tmp_path / "rt"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create a name in it
    monkeypatch.setenv("MISO_RUNTIME_DIR", str(shared))
    as_other(lambda: os.mkdir(shared / "mps", 0o755))
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    daemon = mps.open_daemon(deep, "GPU-x", simulated=True)
    assert daemon.dirs.moved
    with pytest.raises(mps.MpsError, match="owned by uid") as info:
        daemon.start()
    assert info.value.exit_code == 5


def _bystander() -> subprocess.Popen[bytes]:
    """An unrelated process of this user, leading its own process group."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@needs_root
def test_a_swapped_pid_file_never_names_a_process_to_kill(tmp_path: Path) -> None:
    from miso_cli.gpu import mps

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    victim = _bystander()
    try:
        pid_file = pipe / mps.PID_FILE
        pid_file.write_text(f"{victim.pid}\n")
        _give(pid_file)  # written by the other user: not our daemon's
        assert mps.inspect(pipe).pid is None
        pid_file.unlink()
        real = tmp_path / "elsewhere.pid"
        real.write_text(f"{victim.pid}\n")
        pid_file.symlink_to(real)  # a link to a file naming the bystander
        assert mps.inspect(pipe).pid is None
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_pid_file_naming_another_users_process_is_not_trusted(tmp_path: Path) -> None:
    from miso_cli.gpu import mps

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / mps.PID_FILE).write_text("1\n")  # init: alive, and never ours unless root
    state = mps.inspect(pipe)
    assert state.pid == (1 if IS_ROOT else None)


# ------------------------------------------------------------ 4. lock files and state dirs


def test_run_lock_does_not_follow_a_symlink(tmp_path: Path) -> None:
    from miso_cli.runtime.journal import RunLock

    target = _secret(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "run.lock").symlink_to(target)
    with pytest.raises(PermissionDenied, match="symlink"):
        RunLock(state).acquire()
    _unchanged(target)


@needs_root
def test_a_state_dir_another_user_owns_is_refused(tmp_path: Path) -> None:
    from miso_cli.runtime.journal import RunLock
    from miso_cli.runtime.state import check_state_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    _give(state)
    with pytest.raises(PermissionDenied, match="owned by uid"):
        check_state_dir(state)
    with pytest.raises(PermissionDenied, match="owned by uid"):
        RunLock(state).acquire()
    assert not (state / "run.lock").exists()


def test_a_state_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    from miso_cli.runtime.state import check_state_dir

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(PermissionDenied, match="writable by group or others"):
        check_state_dir(state)
    state.chmod(0o700)
    check_state_dir(state)


def test_the_cli_names_a_foreign_state_dir_in_one_line(tmp_path: Path, cli) -> None:
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o777)
    code, out, err = cli("apply", "--gpu", "sim:a100-40gb", "--state-dir", str(state), "7g.40gb")
    assert code == 5
    assert "writable by group or others" in err and "Traceback" not in err


# ------------------------------------------------------------ 5. the model file race


class _Payload:
    """What an attacker pickles: loading it creates a marker file (stands for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_model_is_checked_and_read_through_one_descriptor(tmp_path: Path, monkeypatch) -> None:
    """The model path is swapped for the attacker's file after the ownership check:
    what is unpickled must still be what was checked (here: the swap is refused)."""
    from miso_cli.predict import persist

    models = tmp_path / "models"
    models.mkdir(mode=0o700)
    path = models / "m.joblib"
    path.write_bytes(b"not used")
    path.chmod(0o600)
    meta = {"format": persist.MODEL_FORMAT, "sklearn_version": persist.sklearn_version()}
    side = persist.sidecar(path)
    side.write_text(json.dumps({"metadata": meta, "rows": []}))
    side.chmod(0o600)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    if IS_ROOT and OTHER is not None:
        _give(evil)
    real_read_sidecar = persist.read_sidecar

    def swap_after_check(p: Path):  # runs between the ownership check and the load
        out = real_read_sidecar(p)
        path.unlink()
        path.symlink_to(evil)
        return out

    monkeypatch.setattr(persist, "read_sidecar", swap_after_check)
    with pytest.raises(PermissionDenied):
        persist.load_model(path)
    assert not marker.exists()


@needs_root
def test_a_model_swapped_for_another_users_regular_file_is_refused(tmp_path: Path) -> None:
    from miso_cli.predict import persist

    path = tmp_path / "m.joblib"
    path.write_bytes(b"x")
    _give(path)
    with pytest.raises(PermissionDenied, match="owned by uid"):
        persist.read_private(path)


def test_signal_module_is_available() -> None:  # guards the helpers above on odd platforms
    assert signal.SIGKILL
