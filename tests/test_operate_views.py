"""``miso status`` (runs, --watch), ``miso runs`` and ``miso logs``: reading runs from outside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from miso_cli.errors import ExitCode
from miso_cli.runtime.journal import Attempt
from tests.conftest import parse_envelope
from tests.test_operate_submit import dead_pid, make_run

SIM = ["--gpu", "sim:a100-40gb"]


def running(j, name: str, gpu: int = 0, profile: str = "3g.20gb") -> None:
    rec = j.jobs[name]
    rec.state, rec.gpu, rec.attempt = "running", gpu, 1
    rec.slice = {"profile": profile, "slices": 3, "start": 0, "size": 4}
    rec.progress = {
        "step": 10.0,
        "total": 40.0,
        "fraction": 0.25,
        "step_time_s": 0.12,
        "eta_s": 3.6,
        "updated_at": None,
    }
    rec.attempts = [Attempt(1, gpu, profile, 3, started_at=j.started_at)]


def test_status_json_shows_the_run_and_its_jobs(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b")
    running(j, "a")
    j.save()
    code, out, err = cli("status", *SIM, "--json")
    assert code == 0, err
    data = parse_envelope(out)["data"]
    assert len(data["gpus"]) == 1  # the GPU part is still there
    (run,) = data["runs"]
    assert run["run_id"] == j.run_id and run["policy"] == "nopart" and run["status"] == "running"
    assert run["live"] and run["gpu_spec"] == "sim:a100-40gb"
    rows = {r["name"]: r for r in run["jobs"]}
    assert rows["a"]["state"] == "running" and rows["a"]["gpu"] == 0
    assert rows["a"]["slice"] == "3g.20gb" and rows["a"]["fraction"] == 0.25
    assert rows["a"]["step_time_s"] == 0.12 and rows["a"]["eta_s"] == 3.6
    assert rows["b"]["state"] == "waiting" and rows["b"]["gpu"] is None
    j.data["gpus"] = [{"index": 0, "mode": "mps"}]  # profiling: no instance, under MPS
    j.jobs["a"].slice = None
    j.save()
    code, out, err = cli("status", *SIM, "--json")
    assert parse_envelope(out)["data"]["runs"][0]["jobs"][0]["slice"] == "MPS"


def test_status_uses_the_runs_gpus_by_default(cli, tmp_path: Path, state_dir: Path) -> None:
    make_run(tmp_path, state_dir, "a")
    code, out, err = cli("status", "--json")  # no --gpu: the run's sim:a100-40gb
    assert code == 0, err
    assert parse_envelope(out)["data"]["simulated"]


def test_status_cuts_nothing_off_a_terminal(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a-job-with-a-rather-long-name")
    running(j, "a-job-with-a-rather-long-name")
    j.save()
    code, out, err = cli("status", *SIM, env={"COLUMNS": "60"})
    assert code == 0, err
    assert "NVIDIA A100-SXM4-40GB" in out and "a-job-with-a-rather-long-name" in out
    assert "…" not in out
    code, out, _ = cli("status", *SIM, "--json")
    uuid = parse_envelope(out)["data"]["gpus"][0]["uuid"]
    code, out, _ = cli("status", *SIM, env={"COLUMNS": "60"})
    assert uuid in out


def test_a_run_nobody_drives_is_stopped(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", pid=dead_pid())
    running(j, "a")
    j.save()
    code, out, err = cli("status", *SIM)
    assert code == 0, err
    text = " ".join(out.split())
    assert "stopped" in text and "miso run --resume" in text and "unwatched" in text


def test_watch_draws_until_count_and_never_sleeps_for_real(
    cli, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import miso_cli.cli.status as status

    j = make_run(tmp_path, state_dir, "a")
    slept: list[float] = []

    def fake_sleep(s: float) -> None:  # the run moves on between two views
        slept.append(s)
        running(j, "a")
        j.save()

    monkeypatch.setattr(status, "_sleep", fake_sleep)
    code, out, err = cli("status", *SIM, "--watch", "--count", "2", "--interval", "5", "--json")
    assert code == 0, err
    views = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(views) == 2 and slept == [5.0]
    states = [v["data"]["runs"][0]["jobs"][0]["state"] for v in views]
    assert states == ["waiting", "running"]
    code, out, err = cli("status", *SIM, "--watch", "--count", "2")
    assert code == 0 and out.count(f"run {j.run_id}") == 2


def test_watch_ends_cleanly_on_ctrl_c(
    cli, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import miso_cli.cli.status as status

    make_run(tmp_path, state_dir, "a")

    def interrupt(s: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(status, "_sleep", interrupt)
    code, out, err = cli("status", *SIM, "--watch")
    assert code == 0 and "error" not in err and "run " in out


def test_runs_lists_past_and_current_runs(cli, tmp_path: Path, state_dir: Path) -> None:
    code, out, _ = cli("runs")
    assert code == 0 and "no runs" in out
    old = make_run(tmp_path, state_dir, "a", "b")
    old.jobs["a"].state = "finished"
    old.jobs["b"].state = "failed"
    old.status = "failed"
    old.data["ended_at"] = old.started_at + 90
    old.save()
    new = make_run(tmp_path, state_dir, "c")
    code, out, err = cli("runs", "--json")
    assert code == 0, err
    rows = parse_envelope(out)["data"]["runs"]
    assert [r["run_id"] for r in rows] == [old.run_id, new.run_id]
    assert rows[0]["status"] == "failed" and rows[0]["jobs"] == {"finished": 1, "failed": 1}
    assert rows[0]["elapsed_s"] == 90 and rows[1]["status"] == "running" and rows[1]["live"]
    code, out, _ = cli("runs", env={"COLUMNS": "40"})
    assert old.run_id in out and "failed: 1 failed, 1 finished" in out


LOG = (
    "\n=== miso: a attempt 1 on GPU 0 3g.20gb@0 (MIG-x) at 2025-01-01 10:00:00 ===\n"
    "step 1\nstep 2\n"
    "\n=== miso: a attempt 2 on GPU 0 4g.20gb@0 (MIG-y) at 2025-01-01 10:05:00 ===\n"
    "resumed at 2\nstep 3\n"
)


def test_logs_prints_every_attempt_or_one(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b")
    j.log_path("a").write_text(LOG)
    code, out, _ = cli("logs", "a")
    assert code == 0 and out == LOG
    code, out, _ = cli("logs", "a", "--attempt", "2")
    assert code == 0 and out.startswith("\n=== miso: a attempt 2") and "step 1" not in out
    code, _, err = cli("logs", "a", "--attempt", "3")
    assert code == ExitCode.USAGE and "attempts in the log: 1, 2" in err
    code, out, _ = cli("logs", "a", "--json", "--run", j.run_id[:10])
    assert parse_envelope(out)["data"]["text"] == LOG
    code, out, _ = cli("logs", "b")  # not started yet: an empty log
    assert code == 0 and out == ""
    code, _, err = cli("logs", "../journal")
    assert code == ExitCode.USAGE and "not a job name" in err
    code, _, err = cli("logs", "zz")
    assert code == ExitCode.USAGE and "no job 'zz'" in err


def test_logs_follow_until_the_job_ends(
    cli, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import miso_cli.cli.logs as logs

    j = make_run(tmp_path, state_dir, "a")
    running(j, "a")
    j.save()
    path = j.log_path("a")
    path.write_text("one\n")
    more = iter(["two\n", "three\n"])

    def fake_sleep(s: float) -> None:  # the job writes, then ends
        chunk = next(more, None)
        if chunk is None:
            j.jobs["a"].state = "finished"
            j.save()
            with path.open("a") as fh:
                fh.write("last words\n")  # written just before it ended: not lost
            return
        with path.open("a") as fh:
            fh.write(chunk)

    monkeypatch.setattr(logs, "_sleep", fake_sleep)
    code, out, err = cli("logs", "a", "-f")
    assert code == 0, err
    assert out == "one\ntwo\nthree\nlast words\n"


def test_logs_follow_stops_when_the_run_is_not_driven(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", pid=dead_pid())
    running(j, "a")
    j.save()
    j.log_path("a").write_text("x\n")
    code, out, _ = cli("logs", "a", "-f")
    assert code == 0 and out == "x\n"


def test_status_shows_runs_without_a_driver(
    cli, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from miso_cli.gpu import nvml

    def boom() -> None:
        raise nvml.pynvml.NVMLError(nvml.pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(nvml.pynvml, "nvmlInit", boom)
    j = make_run(tmp_path, state_dir, "a")
    j.data["gpu_spec"] = None  # a run on the real driver
    j.save()
    code, out, err = cli("status", "--json")
    assert code == 0, err
    data = parse_envelope(out)["data"]
    assert data["runs"][0]["run_id"] == j.run_id and data["gpu_error"]["code"] == "NO_GPU"
    code, out, _ = cli("status")
    assert code == 0 and "no NVIDIA driver" in " ".join(out.split())
