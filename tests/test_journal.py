"""The run journal and the launching helpers: atomic state, locks, sudo identity, the wrapper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from miso_cli.errors import UsageError
from miso_cli.runtime import launch
from miso_cli.runtime.journal import Attempt, JobRecord, Journal, RunLock
from miso_cli.spec.queue import parse_queue

ROOT = Path(__file__).resolve().parent.parent


def queue(tmp_path: Path):
    (tmp_path / "t.py").write_text("")
    return parse_queue(
        'version = 1\n[[job]]\nname = "a"\ncommand = ["python", "t.py"]\n'
        '[job.checkpoint]\nsignal = "USR1"\nresume_args = ["--from", "{checkpoint_dir}/x"]\n'
        '[[job]]\nname = "b"\ncommand = "echo hi"\nshell = true\n',
        tmp_path / "q.toml",
    )


def test_journal_round_trip(tmp_path: Path) -> None:
    q = queue(tmp_path)
    j = Journal.create(
        tmp_path / "state",
        q,
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={"hang_timeout_s": 5},
    )
    assert Journal.latest_id(tmp_path / "state") == j.run_id
    rec = j.jobs["a"]
    rec.state, rec.attempt, rec.pid = "running", 1, 1234
    rec.attempts.append(Attempt(1, 0, "3g.20gb", 3, 10.0))
    j.decision({"reason": "because"})
    j.save()
    again = Journal.open(tmp_path / "state")
    assert again.jobs["a"] == rec and again.jobs["b"] == JobRecord("b", queued_at=rec.queued_at)
    assert again.queue.jobs == q.jobs
    assert again.data["decisions"] == [{"reason": "because"}]
    assert (j.run_dir / "journal.json").stat().st_mode & 0o777 == 0o600
    j.event({"event": "x"})
    j.close()
    assert json.loads((j.run_dir / "events.jsonl").read_text()) == {"event": "x"}


def test_open_without_run(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no run to resume"):
        Journal.open(tmp_path)


def test_run_lock_is_exclusive(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        code = (
            "import sys; from pathlib import Path; from miso_cli.runtime.journal import RunLock\n"
            "try:\n    RunLock(Path(sys.argv[1])).acquire()\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
        )
        assert "UsageError" in out.stdout and str(os.getpid()) in out.stdout
    RunLock(tmp_path).acquire()  # released: free again


def _pw(uid: int) -> SimpleNamespace:
    if uid != 1000:
        raise KeyError(uid)
    return SimpleNamespace(pw_name="alice", pw_dir="/home/alice", pw_gid=1000)


@pytest.mark.parametrize(
    "environ, euid, expected",
    [
        ({"SUDO_UID": "1000", "SUDO_GID": "1000", "SUDO_USER": "alice"}, 0, "alice"),
        ({"SUDO_UID": "1000"}, 0, "alice"),  # gid from the password entry
        ({"SUDO_UID": "1000", "SUDO_GID": "1000"}, 1000, None),  # not root: nothing to do
        ({}, 0, None),  # a root login, not sudo
        ({"SUDO_UID": "0"}, 0, None),  # sudo from root
        ({"SUDO_UID": "abc"}, 0, None),
    ],
)
def test_sudo_identity(environ: dict[str, str], euid: int, expected: str | None) -> None:
    ident = launch.run_as_from_env(
        environ, euid, getpwuid=_pw, getgrouplist=lambda name, gid: [gid, 27, 44]
    )
    if expected is None:
        assert ident is None
    else:
        assert ident == launch.RunAs(1000, 1000, (27, 44, 1000), "alice", "/home/alice")


def test_sudo_unknown_user_falls_back() -> None:
    ident = launch.run_as_from_env(
        {"SUDO_UID": "2000", "SUDO_GID": "3000", "SUDO_USER": "bob"},
        0,
        getpwuid=_pw,
        getgrouplist=lambda n, g: [g],
    )
    assert ident is not None and (ident.uid, ident.gid, ident.user) == (2000, 3000, "bob")


def test_env_and_argv(tmp_path: Path) -> None:
    a, b = queue(tmp_path).jobs
    values = {"checkpoint_dir": "/ck", "job": "a", "attempt": 2}
    assert launch.job_argv(a, resume=False, values=values) == ["python", "t.py"]
    assert launch.job_argv(a, resume=True, values=values) == ["python", "t.py", "--from", "/ck/x"]
    assert launch.job_argv(b, resume=True, values=values) == "echo hi"
    run_as = launch.RunAs(1000, 1000, (1000,), "alice", "/home/alice")
    env = launch.job_env(
        a,
        base={"HOME": "/root", "SUDO_UID": "1000", "MISO_RESUME": "1"},
        device="MIG-x",
        attempt=1,
        resume=False,
        values=values,
        extra={"MISO_PROGRESS_FILE": "/p"},
        run_as=run_as,
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "MIG-x" and env["MISO_CHECKPOINT_SIGNAL"] == "SIGUSR1"
    assert env["HOME"] == "/home/alice" and env["USER"] == "alice" and "SUDO_UID" not in env
    assert "MISO_RESUME" not in env and env["MISO_PROGRESS_FILE"] == "/p"


def test_wrapper_records_exit_and_forwards_signals(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    job = parse_queue(
        'version = 1\n[[job]]\nname = "a"\ncommand = ["python", "t.py"]\n', tmp_path / "q.toml"
    ).jobs[0]
    log, exit_file = tmp_path / "a.log", tmp_path / "exit.json"
    started = launch.launch(
        job,
        argv=[sys.executable, "t.py"],
        env=dict(os.environ),
        log_path=log,
        exit_file=exit_file,
        tag="run/a/1",
        header="== header ==\n",
    )
    assert os.getpgid(started.pid) == started.pid  # leads its own group
    deadline = time.time() + 10
    while "ready" not in log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert launch.is_alive(started.pid, started.create_time)
    assert launch.find_wrapper("run/a/1") == (started.pid, pytest.approx(started.create_time))
    assert launch.send(started.pid, signal.SIGUSR1)
    assert started.popen is not None and started.popen.wait(10) == 42
    record = launch.read_exit(exit_file)
    assert record is not None and record["exit_code"] == 42 and record["signal"] is None
    assert log.read_text().startswith("== header ==\n")
    assert started.log_offset == len("== header ==\n")
    assert not launch.is_alive(started.pid, started.create_time)


def test_wrapper_reports_missing_program(tmp_path: Path) -> None:
    exit_file = tmp_path / "exit.json"
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "miso_cli.runtime.jobwrap",
            "--exit-file",
            str(exit_file),
            "--",
            "/nonexistent/prog",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 127 and "cannot start" in rc.stderr
    assert launch.read_exit(exit_file)["exit_code"] == 127


def test_tree_watcher_sees_children(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)",
        ],
        start_new_session=True,
    )
    try:
        # wait (bounded) for the child to be started, instead of sleeping a guess
        deadline = time.monotonic() + 30
        usage = launch.TreeWatcher().sample({"job": proc.pid})
        while usage["job"]["processes"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            usage = launch.TreeWatcher().sample({"job": proc.pid})
        assert usage["job"]["processes"] == 2 and usage["job"]["rss_mb"] > 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
