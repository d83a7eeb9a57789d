"""The executor on the simulated GPU: policies, retries, hangs, signals, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miso_cli.gpu.layouts import Slice
from miso_cli.gpu.profiles import MODELS
from miso_cli.policy import registry
from miso_cli.policy.core import ClusterView, Event, GpuView, JobView
from miso_cli.policy.simple import FixedLayout, NoPart

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"
A100 = MODELS["a100-40gb"]


# ---------------------------------------------------------------- policies (pure)


def view(jobs: list[JobView], gpus: int = 1) -> ClusterView:
    return ClusterView(0.0, [GpuView(i, A100) for i in range(gpus)], {j.name: j for j in jobs})


def test_nopart_one_job_per_gpu_in_queue_order() -> None:
    jobs = [JobView("a", 0), JobView("b", 1), JobView("c", 2, priority=5)]
    targets = NoPart().decide(Event("arrival"), view(jobs, gpus=2))
    assert [(t.gpu, t.mode, t.assignment) for t in targets] == [
        (0, "full", {"c": None}),
        (1, "full", {"a": None}),
    ]
    # a busy GPU is left alone; a job too big for any GPU waits
    v = view([JobView("a", 0, state="running", gpu=0), JobView("x", 1, memory_mb=10**6)])
    v.gpus[0].jobs = {"a": None}
    assert NoPart().decide(Event("tick"), v) == []


def test_fixed_layout_largest_fitting_slice_and_backfill() -> None:
    policy = FixedLayout(["3g.20gb", "2g.10gb", "2g.10gb"])
    jobs = [
        JobView("big", 0, memory_mb=30000),  # fits nothing here: waits, others pass it
        JobView("a", 1, memory_mb=15000),
        JobView("b", 2),
        JobView("c", 3),
        JobView("d", 4),
    ]
    (t,) = policy.decide(Event("arrival"), view(jobs))
    assert t.mode == "mig" and t.layout.name == "3g.20gb+2g.10gb+2g.10gb"
    assert t.assignment["a"].profile == "3g.20gb"
    assert {t.assignment["b"].profile, t.assignment["c"].profile} == {"2g.10gb"}
    assert "big" not in t.assignment and "d" not in t.assignment
    # once applied, a finish frees one slice for the next job; running ones stay put
    v = view([JobView("d", 4)] + [JobView(n, 1, state="running", gpu=0) for n in "abc"])
    v.gpus[0].mode, v.gpus[0].layout = "mig", t.layout
    v.gpus[0].jobs = {"a": t.assignment["a"], "b": t.assignment["b"]}
    v.jobs["c"].state = "finished"
    (t2,) = policy.decide(Event("finish", job="c"), v)
    assert t2.assignment["d"] == t.assignment["c"]
    assert t2.assignment["a"] == t.assignment["a"] and t2.layout == t.layout
    idle = view([])
    idle.gpus[0].mode, idle.gpus[0].layout = "mig", t.layout
    assert policy.decide(Event("tick"), idle) == []  # nothing to change


def test_fixed_layout_keeps_instances_already_there() -> None:
    current = Slice(4, 4, "3g.20gb", 3)
    v = view([JobView("a", 0)])
    v.gpus[0].mode = "mig"
    v.gpus[0].layout = __import__("miso_cli.gpu.layouts", fromlist=["Layout"]).Layout((current,))
    (t,) = FixedLayout(["3g.20gb", "4g.20gb"]).decide(Event("arrival"), v)
    assert current in t.layout.slices


def test_registry() -> None:
    assert isinstance(registry.get("nopart"), NoPart)
    assert isinstance(registry.get("layout", layout=["7g.40gb"]), FixedLayout)
    with pytest.raises(Exception, match="unknown policy"):
        registry.get("nope")
    with pytest.raises(Exception, match="needs --layout"):
        registry.get("layout")


# ---------------------------------------------------------------- the executor, for real


def sim_job(name: str, workload: str, steps: int, *extra: str, **keys: object) -> str:
    cmd = [sys.executable, str(SIM), "--workload", workload, "--steps", str(steps), *extra]
    lines = ["[[job]]", f'name = "{name}"', f"command = {json.dumps(cmd)}", f"steps = {steps}"]
    checkpoint = keys.pop("checkpoint", True)
    for k, v in keys.items():
        lines.append(f"{k} = {json.dumps(v)}")
    if checkpoint:
        lines += ["[job.checkpoint]", 'signal = "SIGUSR1"', 'grace = "3s"']
    return "\n".join(lines) + "\n"


def write_queue(tmp_path: Path, *jobs: str) -> Path:
    q = tmp_path / "queue.toml"
    q.write_text("version = 1\n" + "".join(jobs))
    return q


def miso(state: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MISO_STATE_DIR=str(state))
    return subprocess.run(
        [sys.executable, "-m", "miso_cli", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def envelope(out: str) -> dict:
    return json.loads([ln for ln in out.splitlines() if ln.strip()][-1])


def jobs_of(env: dict) -> dict[str, dict]:
    return {j["name"]: j for j in env["data"]["jobs"]}


def log_of(state: Path, env: dict, job: str) -> str:
    return Path(env["data"]["run_dir"], "logs", f"{job}.log").read_text()


def test_layout_run_retries_and_oom(tmp_path: Path, state_dir: Path) -> None:
    q = write_queue(
        tmp_path,
        sim_job("flaky", "toy-cnn_64", 60, "--fail-at", "20", retries=1),
        sim_job("broken", "toy-cnn_64", 60, "--fail-at", "5", "--fail-attempts", "9"),
        sim_job("huge", "toy-gpt_16", 30, checkpoint=False),  # no memory given: lands on a 1g
        sim_job("fine", "toy-mlp_32", 80),
    )
    r = miso(
        state_dir,
        str(q),
        "--gpu",
        "sim:a100-40gb",
        "--layout",
        "4g.20gb,1g.5gb,1g.5gb,1g.5gb",
        "--speedup",
        "40",
        "--json",
    )
    assert r.returncode == 7, r.stderr
    env = envelope(r.stdout)
    assert env["status"] == "error" and env["errors"][0]["code"] == "JOBS_FAILED"
    jobs = jobs_of(env)
    assert jobs["flaky"]["state"] == "finished" and jobs["flaky"]["retries"] == 1
    assert jobs["flaky"]["attempts"] == 2
    assert jobs["broken"]["state"] == "failed" and "simulated failure" in jobs["broken"]["reason"]
    assert jobs["huge"]["state"] == "failed" and jobs["huge"]["slice"] == "1g.5gb"
    assert "OutOfMemoryError" in jobs["huge"]["reason"]
    assert jobs["fine"]["state"] == "finished"
    s = env["data"]["summary"]
    assert s["finished"] == 2 and s["failed"] == 2 and 0 < s["slice_utilisation"] <= 1
    assert s["makespan_s"] > 0 and s["mean_jct_s"] > 0
    events = [json.loads(ln) for ln in r.stdout.splitlines()[:-1]]
    kinds = {e["event"] for e in events}
    assert {"run_started", "layout_changed", "started", "finished", "failed"} <= kinds
    # the flaky job resumed with its retry, and the journal kept every decision
    journal = json.loads(Path(env["data"]["run_dir"], "journal.json").read_text())
    assert journal["decisions"] and all(d["reason"] for d in journal["decisions"])
    assert Path(env["data"]["report_file"]).exists()


def test_hang_is_detected_and_stopped(tmp_path: Path, state_dir: Path) -> None:
    q = write_queue(
        tmp_path,
        sim_job("stuck", "toy-mlp_32", 100, "--hang-at", "10", hang_timeout="1.5s"),
    )
    r = miso(
        state_dir,
        str(q),
        "--gpu",
        "sim:a100-40gb",
        "--speedup",
        "20",
        "--policy",
        "nopart",
        "--json",
    )
    assert r.returncode == 7, r.stderr
    job = jobs_of(envelope(r.stdout))["stuck"]
    assert job["state"] == "hung" and "no progress" in job["reason"]
    assert job["steps"] == 10


def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def events(state: Path) -> list[dict]:
    out = []
    for p in (state / "runs").glob("*/events.jsonl"):
        out += [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    return out


def start_miso(state: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, MISO_STATE_DIR=str(state))
    return subprocess.Popen(
        [sys.executable, "-m", "miso_cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_sigint_checkpoints_then_resume_continues(tmp_path: Path, state_dir: Path) -> None:
    q = write_queue(
        tmp_path, sim_job("long", "toy-cnn_64", 2000), sim_job("next", "toy-mlp_32", 50)
    )
    proc = start_miso(
        state_dir,
        str(q),
        "--gpu",
        "sim:a100-40gb",
        "--speedup",
        "20",
        "--policy",
        "nopart",
        "--json",
    )
    wait_for(lambda: any(e["event"] == "progress" for e in events(state_dir)))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    env = envelope(out)
    assert env["errors"][0]["code"] == "INTERRUPTED"
    jobs = jobs_of(env)
    assert jobs["long"]["state"] == "interrupted" and jobs["next"]["state"] == "waiting"
    saved = json.loads(
        Path(env["data"]["run_dir"], "jobs/long/checkpoint/sim_train.json").read_text()
    )
    assert 0 < saved["step"] < 2000
    r = miso(state_dir, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    jobs = jobs_of(envelope(r.stdout))
    assert jobs["long"]["state"] == "finished" and jobs["long"]["attempts"] == 2
    assert jobs["next"]["state"] == "finished"
    log = Path(env["data"]["run_dir"], "logs", "long.log").read_text()
    assert f"steps {saved['step']}/2000" in log  # restarted from its checkpoint
    assert log.count("sim_train: done") == 1


def test_resume_after_kill_9(tmp_path: Path, state_dir: Path) -> None:
    jobs = [sim_job(f"j{i}", "toy-mlp_32", 150 + 40 * i) for i in range(5)]
    q = write_queue(tmp_path, *jobs)
    proc = start_miso(
        state_dir,
        str(q),
        "--gpu",
        "sim:a100-40gb",
        "--layout",
        "3g.20gb,2g.10gb,2g.10gb",
        "--speedup",
        "8",
    )
    wait_for(lambda: sum(e["event"] == "started" for e in events(state_dir)) >= 3)
    wait_for(lambda: any(e["event"] == "progress" for e in events(state_dir)), timeout=60)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=10)
    r = miso(state_dir, str(q), "--gpu", "sim:a100-40gb")  # a new run is refused
    assert r.returncode == 2 and "--resume" in r.stderr

    def one_ended() -> bool:
        logs = state_dir.glob("runs/*/logs/*.log")
        return any("sim_train: done" in p.read_text(errors="replace") for p in logs)

    wait_for(one_ended, timeout=60)  # jobs keep running (and some end) while miso is down
    r = miso(state_dir, "--resume", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    env = envelope(r.stdout)
    assert all(j["state"] == "finished" for j in env["data"]["jobs"]), env["data"]["jobs"]
    for j in env["data"]["jobs"]:
        log = log_of(state_dir, env, j["name"])
        assert log.count("sim_train: done") == 1, (j["name"], log)  # exactly one completion
        assert log.count("=== miso: ") == j["attempts"]  # every start is accounted for
    resumed = [e for e in events(state_dir) if e["event"] == "run_resumed"]
    assert resumed and resumed[0]["running"] + resumed[0]["collected"]


def test_end_outcome_of_a_job_process() -> None:
    from miso_cli.runtime.executor import end_outcome

    # a plain exit, with nothing asked of the job
    assert end_outcome(0, None, None, complete=False, lost=False) == "finished"
    assert end_outcome(1, None, None, complete=False, lost=False) == "failure"
    assert end_outcome(None, 9, None, complete=True, lost=False) == "failure"  # not our signal
    assert end_outcome(None, None, None, complete=False, lost=True) == "lost"
    # asked to stop (move, profiling level, requeue, Ctrl-C): it goes back, or is done
    for why in ("migrate", "level", "requeue"):
        assert end_outcome(0, None, why, complete=False, lost=False) == "stopped"
        assert end_outcome(None, 10, why, complete=False, lost=False) == "stopped"
        assert end_outcome(0, None, why, complete=True, lost=False) == "finished"
        # the stop signal caught it as it finished its last step: done, never run twice
        assert end_outcome(None, 10, why, complete=True, lost=False) == "finished"
    assert end_outcome(None, 2, "interrupt", complete=False, lost=False) == "interrupted"
    assert end_outcome(None, 10, "interrupt", complete=True, lost=False) == "finished"
    # a hung job stays hung even if its counter claims the end
    assert end_outcome(None, 9, "hang", complete=True, lost=False) == "hung"


def test_a_stop_request_is_journaled_before_the_signal_is_sent(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If miso dies right after signalling, a resumed run must know the job was asked to
    checkpoint: an exit 0 then means 'stopped', not 'finished'."""
    from miso_cli.policy.simple import NoPart
    from miso_cli.runtime import launch
    from miso_cli.runtime.executor import Executor
    from miso_cli.runtime.journal import Journal
    from miso_cli.spec.queue import parse_queue

    (tmp_path / "t.py").write_text("")
    spec = 'version = 1\n[[job]]\nname = "a"\ncommand = ["python", "t.py"]\n'
    journal = Journal.create(
        state_dir,
        parse_queue(spec, tmp_path / "q.toml"),
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={},
    )
    rec = journal.jobs["a"]
    rec.state, rec.attempt, rec.pid = "running", 1, 424242
    journal.save()
    seen = []

    def send(pid: int, sig: int) -> None:
        on_disk = Journal.open(state_dir, journal.run_id).jobs["a"]
        seen.append((pid, on_disk.state, on_disk.stop_reason))

    monkeypatch.setattr(launch, "send", send)
    Executor(None, NoPart(), journal).stop_jobs(["a"], {"a": "migrate"}, wait=False)
    assert seen == [(424242, "stopping", "migrate")]


def test_policy_miso_resumes_after_an_interrupt(tmp_path: Path, state_dir: Path) -> None:
    """miso answered only arrivals and finishes, and a resume sends neither: every job
    was failed as 'found no GPU instance for it'."""
    q = write_queue(
        tmp_path, sim_job("long", "toy-cnn_64", 1500), sim_job("next", "toy-mlp_32", 200)
    )
    args = ["--gpu", "sim:a100-40gb", "--speedup", "20", "--policy", "miso", "--json"]
    proc = start_miso(state_dir, str(q), *args)
    # Interrupted once the policy has put the jobs somewhere (miso profiles them first);
    # a generous bound, not a duration: a loaded machine may take long to get there.
    placed = ("profiling", "progress")
    wait_for(lambda: any(e["event"] in placed for e in events(state_dir)), timeout=180)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    r = miso(state_dir, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    jobs = jobs_of(envelope(r.stdout))
    assert {j["state"] for j in jobs.values()} == {"finished"}
