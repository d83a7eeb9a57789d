"""The MPS control daemon lifecycle, with stand-in control programs on PATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from miso_cli.errors import GpuBusy, NoGpu
from miso_cli.gpu import mps
from miso_cli.gpu.sim import sim_mps_control as smc

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "miso_cli" / "gpu" / "sim" / "sim_mps_control.py"
DEVICE = "GPU-5e1f0c2a-0000-4000-8000-000000000001"


def _install(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / mps.CONTROL
    exe.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    exe.chmod(0o755)


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put a stand-in ``nvidia-cuda-mps-control`` first on PATH; returns its installer."""
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def install(body: str | None = None) -> None:
        _install(bin_dir, body or f'exec "{sys.executable}" "{STANDIN}" "$@"\n')

    return install


def _daemon(state_dir: Path, **kw) -> mps.MpsDaemon:
    return mps.open_daemon(state_dir, DEVICE, simulated=False, timeout_s=kw.pop("timeout_s", 5))


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_start_then_stop_leaves_nothing(on_path, state_dir: Path) -> None:
    on_path()
    d = _daemon(state_dir)
    with d:
        pid = d.pid
        assert pid is not None and d.alive()
        assert d.dirs.pipe.is_relative_to(state_dir.resolve())
        assert int(d.dirs.pid_file.read_text()) == pid
        assert d.dirs.socket.exists()
        assert d.command("get_default_active_thread_percentage") == "100.0"
        env = d.client_env(43)
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(d.dirs.pipe)
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "43"
        assert env["CUDA_VISIBLE_DEVICES"] == DEVICE
    assert not mps._alive(pid)
    assert not d.dirs.pipe.exists()
    assert "Starting control daemon" in (d.dirs.log / "control.log").read_text()
    assert mps.inspect(d.dirs.pipe) == mps.DaemonState(d.dirs.pipe, None, False)
    d.stop()  # idempotent


def test_a_live_daemon_on_the_pipe_dir_is_refused_and_left_alone(on_path, state_dir) -> None:
    on_path()
    with _daemon(state_dir) as first:
        second = _daemon(state_dir)
        with pytest.raises(GpuBusy, match=f"pid {first.pid}"):
            second.start()
        second.stop()  # never started: must not stop the first one
        assert first.alive()
        assert first.command("get_server_list") == ""


def test_the_control_program_itself_refuses_a_second_daemon(on_path, state_dir) -> None:
    on_path()
    with _daemon(state_dir) as d:
        env = d._env()
        done = subprocess.run([mps.CONTROL, "-d"], env=env, capture_output=True, text=True)
        assert done.returncode == 1
        assert "already running" in done.stderr


def test_a_stale_pipe_dir_is_cleared_and_reported(on_path, state_dir) -> None:
    on_path()
    d = _daemon(state_dir)
    d.dirs.pipe.mkdir(parents=True)
    dead = _dead_pid()
    d.dirs.pid_file.write_text(f"{dead}\n")
    d.dirs.socket.write_text("")
    assert mps.inspect(d.dirs.pipe).stale
    with d:
        assert d.alive()
        assert any("stale" in n and str(dead) in n for n in d.notes)


def test_a_socket_without_pid_file_is_stale(on_path, state_dir) -> None:
    on_path()
    d = _daemon(state_dir)
    d.dirs.pipe.mkdir(parents=True)
    d.dirs.socket.write_text("")
    state = mps.inspect(d.dirs.pipe)
    assert state.stale and not state.running


def test_a_crashed_daemon_is_noticed_and_cleaned_up(on_path, state_dir) -> None:
    on_path()
    d = _daemon(state_dir)
    with d:
        os.kill(d.pid, signal.SIGKILL)
        assert mps._wait_gone(d.pid, 5)
        assert not d.alive()
        with pytest.raises(mps.MpsError, match="not running"):
            d.command("get_server_list")
    assert any("had died" in n for n in d.notes)
    assert not d.dirs.pipe.exists()
    with _daemon(state_dir) as again:  # the next run starts cleanly
        assert again.alive()


def test_a_daemon_that_fails_to_start_is_an_error_naming_why(on_path, state_dir) -> None:
    on_path('echo "cannot open /dev/nvidiactl: permission denied" >&2\nexit 1\n')
    with pytest.raises(mps.MpsError, match="exit 1.*permission denied"):
        _daemon(state_dir).start()


def test_a_daemon_that_never_comes_up_times_out(on_path, state_dir) -> None:
    on_path("exit 0\n")  # '-d' returns but no daemon appears
    # It gives up on its own timeout (the message says which), not on a wall-clock bound
    # of this test's, which a loaded host could break.
    with pytest.raises(mps.MpsError, match=r"did not come up within 0\.5 s"):
        _daemon(state_dir, timeout_s=0.5).start()


def test_a_daemon_that_ignores_quit_is_killed(on_path, state_dir) -> None:
    on_path(
        """
        if [ "$1" = "-d" ]; then
            mkdir -p "$CUDA_MPS_PIPE_DIRECTORY"
            ( trap '' TERM; exec sleep 300 ) </dev/null >/dev/null 2>&1 &
            echo $! > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
            : > "$CUDA_MPS_PIPE_DIRECTORY/control"
            exit 0
        fi
        cat >/dev/null
        exit 0
        """
    )
    d = _daemon(state_dir)
    d.start()
    pid = d.pid
    d.stop(grace_s=0.3)
    assert not mps._alive(pid)
    assert any("ignored quit" in n for n in d.notes)


def test_cleanup_on_error(on_path, state_dir) -> None:
    on_path()
    d = _daemon(state_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with d:
            pid = d.pid
            raise RuntimeError("boom")
    assert not mps._alive(pid)
    assert not d.dirs.pipe.exists()


def test_cleanup_on_ctrl_c(on_path, state_dir, tmp_path: Path) -> None:
    on_path()
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from miso_cli.gpu import mps
            d = mps.open_daemon(Path({str(state_dir)!r}), {DEVICE!r}, simulated=False)
            try:
                with d:
                    print(d.pid, flush=True)
                    time.sleep(60)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(130)
            """
        )
    )
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    assert mps._alive(pid)
    child.send_signal(signal.SIGINT)
    rest = child.stdout.read()
    assert child.wait(timeout=20) == 130
    assert "interrupted" in rest
    assert not mps._alive(pid)
    assert not mps.mps_dirs(state_dir, DEVICE).pipe.exists()


def test_missing_control_program_is_no_gpu(monkeypatch, tmp_path, state_dir) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(NoGpu, match="nvidia-cuda-mps-control not found"):
        _daemon(state_dir)


def test_deep_state_dirs_move_the_pipe_dir_and_say_so(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    dirs = mps.mps_dirs(deep, DEVICE)
    assert dirs.moved
    assert len(os.fsencode(dirs.socket)) <= mps.SUN_PATH_MAX
    assert dirs.log.is_relative_to(deep.resolve())
    assert mps.mps_dirs(deep, DEVICE) == dirs  # stable: a later run finds the same daemon
    assert mps.mps_dirs(deep, "GPU-other") != dirs


def test_share_must_be_a_percentage(on_path, state_dir) -> None:
    on_path()
    d = _daemon(state_dir)
    for bad in (0, 120, -1):
        with pytest.raises(ValueError):
            d.client_env(bad)


def test_simulated_daemon_records_itself_and_its_clients(state_dir: Path) -> None:
    from miso_cli.gpu.sim import simnvml
    from miso_cli.runtime.state import atomic_write_json

    sim = state_dir / "sim" / "a100-40gb.json"
    atomic_write_json(sim, simnvml.new_state("a100-40gb"))
    uuid = json.loads(sim.read_text())["gpus"][0]["uuid"]
    d = mps.open_daemon(state_dir, uuid, simulated=True, sim_state=sim)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with d:
            (rec,) = json.loads(sim.read_text())["extensions"]["mps"]["daemons"]
            assert rec["pid"] == d.pid and rec["devices"] == [uuid]
            me = smc.connect(sim, os.getpid(), uuid, "resnet_64", env=d.client_env(50))
            other = smc.connect(sim, sleeper.pid, uuid, "bert_2", env=d.client_env(14))
            assert me and other and me["active_thread_percentage"] == 50.0
            assert [
                (c["workload"], c["active_thread_percentage"])
                for c in smc.co_runners(sim, os.getpid())
            ] == [("bert_2", 14.0)]
            assert d.server_pids() == [d.pid]
            assert d.command("get_active_thread_percentage " + str(sleeper.pid)) == "14.0"
            # another device, or no daemon on the pipe dir: no MPS
            assert smc.connect(sim, os.getpid(), "GPU-nope", "x", env=d.client_env(50)) is None
        after = json.loads(sim.read_text())["extensions"]["mps"]
        assert after == {"daemons": [], "clients": []}
        assert smc.connect(sim, os.getpid(), uuid, "resnet_64", env=d.client_env(50)) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_daemon_a_killed_miso_left_is_stopped_by_the_gpu_lock_holder(
    on_path, state_dir, monkeypatch
) -> None:
    from miso_cli.runtime import locks

    on_path()
    left = _daemon(state_dir).start()  # its miso is killed: nobody will stop it
    pid = left.pid
    try:
        monkeypatch.setitem(locks._HELD, (0, 0), None)  # this process holds the GPU
        with _daemon(state_dir) as d:
            assert d.pid != pid and d.alive()
            assert any(f"pid {pid}" in n and "killed" in n for n in d.notes)
        assert not mps._alive(pid)
    finally:
        if pid and mps._alive(pid):
            os.kill(pid, signal.SIGKILL)
