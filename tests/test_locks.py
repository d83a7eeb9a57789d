"""One lock per GPU across commands and state dirs; signals held back; bounded retries."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from miso_cli.errors import GpuBusy, MisoError
from miso_cli.gpu.nvml import open_driver
from miso_cli.runtime.locks import GpuLock, deferred_signals, gpu_lock, hold_gpus, lock_key
from miso_cli.runtime.retry import Backoff, is_transient, retry

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = GpuLock(tmp_path, "GPU-abc", "run", 0).acquire()
    try:
        clock = FakeClock()
        second = GpuLock(tmp_path, "GPU-abc", "apply", 0)
        with pytest.raises(GpuBusy) as info:
            second.acquire(2.0, clock=clock, sleep=clock.sleep, poll_s=0.5)
        msg = info.value.message
        assert f"pid {os.getpid()}" in msg and "miso run" in msg and "user " in msg
        assert "after waiting 2 s" in msg
        assert clock.sleeps == [0.5] * 4  # bounded, and no real waiting
        assert info.value.details["holder"]["command"] == "run"
        assert not second.held
        # another GPU is another lock
        GpuLock(tmp_path, "GPU-def", "apply", 1).acquire().release()
    finally:
        first.release()
    GpuLock(tmp_path, "GPU-abc", "apply", 0).acquire().release()  # free again


def test_the_lock_goes_with_its_holder_even_on_kill_9(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from miso_cli.runtime.locks import GpuLock; "
        f"GpuLock(Path({str(tmp_path)!r}), 'GPU-k', 'profile', 0).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"held"
        with pytest.raises(GpuBusy, match=f"miso profile \\(pid {child.pid}"):
            GpuLock(tmp_path, "GPU-k", "apply", 0).acquire()
    finally:
        child.kill()
        child.wait()
    GpuLock(tmp_path, "GPU-k", "apply", 0).acquire().release()


class _RealGpu:
    """A real driver as the lock sees it: not simulated, a GPU with a UUID."""

    is_simulated = False
    sim_state_path = None

    def gpu(self, i: int):
        from types import SimpleNamespace

        return SimpleNamespace(uuid=f"GPU-real-{i}")


def test_a_real_gpu_has_one_lock_whatever_the_state_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MISO_RUNTIME_DIR", str(tmp_path / "rt"))
    # Two commands with different state dirs: the lock does not depend on either.
    with hold_gpus(_RealGpu(), [0], "run", recover=False):
        with pytest.raises(GpuBusy, match="miso run"):
            with hold_gpus(_RealGpu(), [0], "apply", recover=False):
                pass
        with hold_gpus(_RealGpu(), [1], "apply", recover=False):
            pass
    assert (tmp_path / "rt" / "gpu" / "GPU-real-0.lock").exists()
    assert (tmp_path / "rt").stat().st_mode & 0o077 == 0


def test_lock_files_are_named_by_gpu_uuid(tmp_path: Path) -> None:
    drv = open_driver("sim:a100-40gb", tmp_path / "s")
    lk = gpu_lock(drv, 0, "apply")
    assert drv.gpu(0).uuid and lock_key(drv.gpu(0).uuid, 0) in lk.path.name
    assert lock_key("../../etc/passwd", 0) == ".._.._etc_passwd"
    assert lock_key(None, 3) == "index-3"


def test_a_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    from miso_cli.errors import PermissionDenied

    target = tmp_path / "victim"
    target.write_text("keep\n")
    (tmp_path / "GPU-x.lock").symlink_to(target)
    with pytest.raises(PermissionDenied, match="symlink"):
        GpuLock(tmp_path, "GPU-x", "apply").acquire()
    assert target.read_text() == "keep\n"


def test_apply_refuses_while_another_command_holds_the_gpu(cli, state_dir) -> None:
    drv = open_driver("sim:a100-40gb", state_dir)
    lk = gpu_lock(drv, 0, "run").acquire()
    try:
        # --force terminates processes on the instances; it never overrides a run's lock
        code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "--wait", "0", "--force", "7g.40gb")
        assert code == 8, err
        assert "miso run" in err and f"pid {os.getpid()}" in err and "Traceback" not in err
    finally:
        lk.release()
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "--wait", "0", "7g.40gb")
    assert code == 0, err


# ------------------------------------------------------------ deferred signals


def test_signals_wait_for_the_block_then_arrive_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals() as pending:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            assert pending == [signal.SIGINT]  # held, the block goes on
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------ retry


class _NvmlErr(MisoError):
    def __init__(self, name: str) -> None:
        super().__init__(name, details={"nvml_error": name})
        self.nvml_error = name


def test_retry_transient_errors_with_growing_pauses() -> None:
    calls: list[int] = []
    pauses: list[float] = []
    seen: list[tuple[int, str, float]] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _NvmlErr("UNKNOWN")
        return "ok"

    out = retry(
        flaky,
        policy=Backoff(tries=5, first_s=0.1, factor=3, max_s=1),
        sleep=pauses.append,
        on_retry=lambda n, e, p: seen.append((n, str(e), p)),
    )
    assert out == "ok" and pauses == [0.1, pytest.approx(0.3)]
    assert [s[0] for s in seen] == [1, 2]


def test_retry_gives_up_with_the_last_error_and_never_retries_a_hard_one() -> None:
    pauses: list[float] = []
    n = [0]

    def always() -> None:
        n[0] += 1
        raise _NvmlErr("TIMEOUT")

    with pytest.raises(_NvmlErr):
        retry(always, policy=Backoff(tries=4, first_s=1, max_s=2), sleep=pauses.append)
    assert n[0] == 4 and pauses == [1, 2, 2]

    def hard() -> None:
        n[0] += 1
        raise _NvmlErr("NO_PERMISSION")

    n[0] = 0
    with pytest.raises(_NvmlErr):
        retry(hard, sleep=pauses.append)
    assert n[0] == 1


def test_transient_means_a_passing_nvml_error_or_a_full_disk() -> None:
    assert is_transient(_NvmlErr("IN_USE"))
    assert not is_transient(_NvmlErr("INVALID_ARGUMENT"))
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(OSError(errno.EACCES, "Permission denied"))
    assert not is_transient(ValueError("x"))
    assert Backoff(tries=3, first_s=1, factor=2, max_s=10).total_s == 3


def test_run_refuses_a_gpu_another_command_is_changing(cli, state_dir) -> None:
    queue = Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml"
    drv = open_driver("sim:a100-40gb", state_dir)
    with hold_gpus(drv, [0], "apply"):
        code, _, err = cli("run", str(queue), "--gpu", "sim:a100-40gb", "--policy", "nopart")
    assert code == 8, err
    assert "miso apply" in err and "Traceback" not in err
    assert not (state_dir / "runs").exists()  # refused before a journal existed


def test_retrying_driver_weathers_a_transient_error_and_reports_it() -> None:
    from miso_cli.gpu import nvml as nvml_mod
    from miso_cli.gpu.nvml import Driver
    from miso_cli.gpu.sim.simnvml import SimNvml, new_state
    from miso_cli.runtime.retry import RetryingDriver, unwrap

    sim = SimNvml(nvml_mod.pynvml, state=new_state("a100-40gb"))
    seen: list[tuple[str, int]] = []
    pauses: list[float] = []
    drv = RetryingDriver(
        Driver(sim, simulated=True),
        sleep=pauses.append,
        on_retry=lambda call, n, exc, pause: seen.append((call, n)),
    )
    sim.inject_fault("nvmlDeviceGetCount", 1, "UNKNOWN")
    assert drv.device_count() == 1
    assert seen == [("device_count", 1)] and len(pauses) == 1
    assert drv.is_simulated and isinstance(unwrap(drv), Driver)
    sim.inject_fault("nvmlDeviceGetCount", "*", "TIMEOUT")  # persistent: raised as is
    with pytest.raises(MisoError, match="TIMEOUT"):
        drv.device_count()
    assert len(pauses) == 1 + drv.policy.tries - 1


def test_a_transient_nvml_error_in_a_run_is_retried_and_journaled(
    cli, tmp_path: Path, state_dir: Path, monkeypatch
) -> None:
    import json

    from miso_cli.runtime import retry as retry_mod

    monkeypatch.setattr(retry_mod, "RUN_BACKOFF", Backoff(tries=3, first_s=0.0))
    sim_train = ROOT / "examples" / "sim_train.py"
    cmd = [sys.executable, str(sim_train), "--workload", "toy-mlp_32", "--steps", "20"]
    q = tmp_path / "q.toml"
    q.write_text(f'version = 1\n[[job]]\nname = "a"\ncommand = {json.dumps(cmd)}\nsteps = 20\n')
    faults = {"MISO_SIM_FAULTS": "nvmlDeviceGetMigMode:3:UNKNOWN"}
    code, out, err = cli(
        "run",
        str(q),
        "--gpu",
        "sim:a100-40gb",
        "--speedup",
        "50",
        "--policy",
        "nopart",
        env=faults,
    )
    assert code == 0, err
    events = [
        json.loads(line)
        for line in next((state_dir / "runs").glob("2*/events.jsonl")).read_text().splitlines()
    ]
    retries = [e for e in events if e["event"] == "nvml_retry"]
    assert retries and retries[0]["call"] == "gpu" and "UNKNOWN" in retries[0]["error"]


def test_a_full_disk_is_waited_out_then_reported(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from miso_cli.runtime import state

    pauses: list[float] = []
    monkeypatch.setattr(state, "_sleep", pauses.append)
    real = tempfile.mkstemp
    fails = [2]

    def full(*a, **k):
        if fails[0] > 0:
            fails[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", full)
    state.atomic_write_text(tmp_path / "j.json", "{}\n")
    assert (tmp_path / "j.json").read_text() == "{}\n" and len(pauses) == 2
    fails[0] = 10**6
    with pytest.raises(OSError) as info:
        state.atomic_write_text(tmp_path / "k.json", "{}\n")
    assert info.value.errno == errno.ENOSPC and str(tmp_path / "k.json") in str(info.value)
    assert len(pauses) == 2 + state.DISK_RETRIES - 1
