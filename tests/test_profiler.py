"""Profiling under MPS on the simulated GPU, end to end through ``miso profile``."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import parse_envelope

from miso_cli.gpu.sim import simmps
from miso_cli.spec import profiles_store as store
from miso_cli.spec.catalog import load_catalog
from miso_cli.spec.queue import JobSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CATALOG = load_catalog(EXAMPLES / "catalog.csv")
GPU = ("--gpu", "sim:a100-40gb")
FAST = ("--min-steps", "8", "--warmup-steps", "2", "--speedup", "20")

# A synthetic job that, like a CUDA client, connects to the MPS daemon and paces its
# steps by the simulated MPS model with whoever shares the daemon right now.
MPS_JOB = textwrap.dedent(
    f"""
    import os, sys, time
    sys.path.insert(0, {str(ROOT)!r})
    from pathlib import Path
    from miso_cli import report
    from miso_cli.spec.catalog import load_catalog
    from miso_cli.gpu.sim import simmps
    from miso_cli.gpu.sim import sim_mps_control as smc
    cat = load_catalog({str(EXAMPLES / "catalog.csv")!r})
    w = cat[sys.argv[1]]
    state, dev = Path(os.environ["MISO_SIM_STATE"]), os.environ["CUDA_VISIBLE_DEVICES"]
    speedup = float(os.environ["MISO_SIM_SPEEDUP"])
    me = smc.connect(state, os.getpid(), dev, w.name)
    assert me is not None, "not under MPS"
    pct, co, seen, last = me["active_thread_percentage"], [], 0.0, None
    for i in range(100000):
        if time.time() - seen > 0.5:
            co = [(cat[c["workload"]], c["active_thread_percentage"])
                  for c in smc.co_runners(state, os.getpid())]
            seen = time.time()
        ms = simmps.step_time_ms(w, pct, co)
        if i == 0 or ms != last:  # the pace it keeps, for the test to read (not wall time)
            print(f"paced {{pct:g}} {{ms:.6f}}", flush=True)
        last = ms
        time.sleep(ms / 1000 / speedup)
        report.step(i + 1)
    """
)


def _queue(tmp_path: Path, jobs: list[dict]) -> Path:
    lines = ["version = 1"]
    for j in jobs:
        lines.append("[[job]]")
        for k, v in j.items():
            if k == "checkpoint":
                continue
            lines.append(f"{k} = {json.dumps(v)}")
        if "checkpoint" in j:
            lines.append("[job.checkpoint]")
            for k, v in j["checkpoint"].items():
                lines.append(f"{k} = {json.dumps(v)}")
    path = tmp_path / "queue.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _sim(name: str, workload: str, *extra: str, **kw) -> dict:
    job = {
        "name": name,
        "command": [sys.executable, "sim_train.py", "--workload", workload, "--steps", "100000"]
        + list(extra),
        "cwd": str(EXAMPLES),
        "workload": workload,
    }
    job.update(kw)
    return job


def _profiles(out: str) -> dict[str, dict]:
    env = parse_envelope(out)
    return {p["job"]: p for p in env["data"]["profiles"]}


def test_solo_step_times_match_the_catalog(cli, tmp_path: Path, state_dir: Path) -> None:
    q = _queue(
        tmp_path,
        [_sim("bert", "toy-bert_8", "--memory-mb", "3000"), _sim("cnn", "toy-cnn_64")],
    )
    code, out, _ = cli(
        "profile", str(q), *GPU, "--mode", "solo", "--levels", "100,29", *FAST, "--json"
    )
    assert code == 0, out
    got = _profiles(out)
    work = state_dir / "profiles" / "work"
    for name, wl in (("bert", "toy-bert_8"), ("cnn", "toy-cnn_64")):
        log = (work / name / "job.log").read_text()
        for lv in (100, 29):
            want = CATALOG[wl].mps_step_time_ms(lv) / 1000
            # The job paced itself by the catalog at this share (its log says so); the
            # measurement is wall time on a shared machine, scaled back by --speedup 20:
            # never faster than the pace, so only that bound is asserted.
            assert f"under MPS at {lv}%: {want * 1000:.1f} ms/step" in log
            assert got[name]["step_time_s"][f"{lv}"] > 0.7 * want
            assert got[name]["status"][f"{lv}"] == "ok"
        assert got[name]["co_runners"] == []
    # memory from the driver's per-process accounting (the job attached 3000 MiB)
    assert got["bert"]["peak_memory_mb"] == pytest.approx(3000)
    assert got["bert"]["levels"][0]["memory_source"] == "nvml"
    assert got["cnn"]["peak_memory_mb"] is None
    # the daemon is gone and its record with it
    sim = json.loads((state_dir / "sim" / "a100-40gb.json").read_text())
    assert sim["extensions"]["mps"]["daemons"] == []
    assert sim["processes"] == []


def test_colocated_jobs_measure_their_interference(cli, tmp_path: Path, state_dir) -> None:
    script = tmp_path / "mps_job.py"
    script.write_text(MPS_JOB)
    mix = ["toy-bert_8", "toy-cnn_64", "toy-mlp_32"]
    q = _queue(
        tmp_path,
        [
            {"name": w.split("_")[0], "command": [sys.executable, str(script), w], "workload": w}
            for w in mix
        ],
    )
    slow = ("--min-steps", "8", "--warmup-steps", "2", "--speedup", "5")
    code, out, _ = cli("profile", str(q), *GPU, "--levels", "100,14", *slow, "--json")
    assert code == 0, out
    got = _profiles(out)
    work = state_dir / "profiles" / "work"
    for w in mix:
        name = w.split("_")[0]
        others = [(CATALOG[o], 0.0) for o in mix if o != w]
        assert sorted(got[name]["co_runners"]) == sorted(o.split("_")[0] for o in mix if o != w)
        paced: dict[str, float] = {}
        for line in (work / name / "job.log").read_text().splitlines():
            if line.startswith("paced "):
                _, lv_text, ms = line.split()
                paced[lv_text] = float(ms)  # the last pace at each level: the full mix
        for lv in (100, 14):
            co = [(o, float(lv)) for o, _ in others]
            want = simmps.step_time_ms(CATALOG[w], lv, co) / 1000
            # Each job ran at the pace of the whole mix at this level (its log), and the
            # measurement (wall time, scaled back) is never faster than that pace.
            assert paced[f"{lv}"] / 1000 == pytest.approx(want, rel=1e-6)
            assert got[name]["step_time_s"][f"{lv}"] > 0.7 * want
        # at 100 % three jobs oversubscribe the SMs: slower than alone
        alone = CATALOG[w].mps_step_time_ms(100) / 1000
        assert got[name]["step_time_s"]["100"] > 1.4 * alone


def test_failures_oom_and_timeouts_are_recorded_not_retried(
    cli, tmp_path: Path, state_dir: Path
) -> None:
    oom = {
        "name": "oom",
        "command": "echo 'RuntimeError: CUDA out of memory. Tried to allocate 2 GiB' >&2; exit 1",
        "shell": True,
    }
    q = _queue(
        tmp_path,
        [
            oom,
            {  # fails at once: a Python start-up on a loaded host can outlast a short level
                "name": "crash",
                "command": "echo 'RuntimeError: simulated failure at step 1' >&2; exit 1",
                "shell": True,
            },
            _sim("hang", "toy-mlp_32", "--hang-at", "3"),
            _sim("fine", "toy-cnn_64"),
        ],
    )
    code, out, _ = cli(
        "profile", str(q), *GPU, "--levels", "100,50", *FAST, "--max-time", "8", "--json"
    )
    assert code == 7
    env = parse_envelope(out)
    assert env["errors"][0]["code"] == "JOBS_FAILED"
    got = {p["job"]: p for p in env["data"]["profiles"]}
    assert got["oom"]["status"] == {"100": "oom", "50": "skipped"}
    assert got["crash"]["status"] == {"100": "failed", "50": "skipped"}
    assert "simulated failure" in got["crash"]["levels"][0]["reason"]
    assert got["hang"]["status"] == {"100": "timeout", "50": "timeout"}
    assert got["fine"]["status"] == {"100": "ok", "50": "ok"}
    # started once, never again: one exit record each
    work = state_dir / "profiles" / "work"
    assert sorted(p.name for p in (work / "oom").glob("exit-*.json")) == ["exit-1.json"]
    assert sorted(p.name for p in (work / "crash").glob("exit-*.json")) == ["exit-1.json"]


def test_checkpointable_jobs_resume_between_levels(cli, tmp_path: Path, state_dir) -> None:
    q = _queue(
        tmp_path,
        [_sim("ck", "toy-cnn_64", checkpoint={"signal": "SIGUSR1", "grace": "5s"})],
    )
    code, out, _ = cli("profile", str(q), *GPU, "--levels", "100,50", *FAST, "--json")
    assert code == 0, out
    log = (state_dir / "profiles" / "work" / "ck" / "job.log").read_text()
    starts = [ln for ln in log.splitlines() if ln.startswith("sim_train: toy-cnn_64")]
    assert len(starts) == 2
    assert "steps 0/" in starts[0]
    assert "steps 0/" not in starts[1]  # resumed from the save made when 100 % ended
    assert "checkpoint saved" in log


def test_profiles_are_stored_reused_and_refreshed(cli, tmp_path: Path, state_dir: Path) -> None:
    q = _queue(tmp_path, [_sim("a", "toy-mlp_32"), _sim("b", "toy-cnn_64")])
    args = ("profile", str(q), *GPU, "--levels", "100", *FAST, "--json")
    code, out, _ = cli(*args)
    assert code == 0
    first = parse_envelope(out)["data"]
    assert first["measured"] == 2 and first["reused"] == 0
    files = sorted((state_dir / "profiles").glob("*.json"))
    assert len(files) == 2
    rec = json.loads(files[0].read_text())
    assert rec["gpu_model"] == "a100-40gb" and rec["driver_version"]
    assert rec["mode"] == "colocated" and len(rec["co_runners"]) == 1

    code, out, _ = cli(*args)
    again = parse_envelope(out)["data"]
    assert again["measured"] == 0 and again["reused"] == 2
    assert all(p["reused"] for p in again["profiles"])
    assert again["profiles"][0]["step_time_s"] == first["profiles"][0]["step_time_s"]

    code, out, _ = cli(*args, "--refresh")
    assert parse_envelope(out)["data"]["measured"] == 2

    # another level was never measured: measure again
    code, out, _ = cli("profile", str(q), *GPU, "--levels", "100,50", *FAST, "--json")
    assert parse_envelope(out)["data"]["measured"] == 2


def test_fingerprint_and_freshness() -> None:
    a = JobSpec(name="a", command=["python", "t.py", "--bs", "64"], cwd="/tmp")
    assert store.fingerprint(a) == store.fingerprint(
        JobSpec(name="z", command=a.command, cwd="/tmp")
    )
    for other in (
        JobSpec(name="a", command=["python", "t.py", "--bs", "128"], cwd="/tmp"),
        JobSpec(name="a", command=a.command, cwd="/"),
        JobSpec(name="a", command=a.command, cwd="/tmp", env={"X": "1"}),
    ):
        assert store.fingerprint(other) != store.fingerprint(a)
    prof = store.StoredProfile(
        fingerprint="f",
        job="a",
        command=a.command,
        cwd="/tmp",
        env={},
        gpu_model="a100-40gb",
        gpu_name="A100",
        driver_version="550",
        mode="colocated",
        co_runners=["g"],
        levels=[
            {"level": 100.0, "status": "ok", "step_time_s": 0.1},
            {"level": 14.0, "status": "oom", "step_time_s": None},
        ],
        started_at=0.0,
        finished_at=1000.0,
    )
    kw = {"gpu_model": "a100-40gb", "driver_version": "550", "now": 1001.0}
    assert prof.is_fresh(levels=[100], co_runners=["g"], **kw)
    assert not prof.is_fresh(levels=[100, 14], **kw)  # not ok at 14
    assert not prof.is_fresh(levels=[100], co_runners=["h"], **kw)
    assert not prof.is_fresh(levels=[100], mode="solo", **kw)
    assert not prof.is_fresh(levels=[100], **{**kw, "driver_version": "560"})
    assert not prof.is_fresh(levels=[100], **{**kw, "now": 1000.0 + 8 * 24 * 3600})


def test_damaged_store_file_is_bad_input(state_dir: Path) -> None:
    from miso_cli.errors import BadInput

    (state_dir / "profiles").mkdir(parents=True)
    (state_dir / "profiles" / "abc.json").write_text("{not json")
    with pytest.raises(BadInput, match="abc.json: damaged profile"):
        store.load(state_dir, "abc")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--levels", "100,abc"), "--levels: 'abc'"),
        (("--levels", "0"), "--levels: 0"),
        (("--levels", "100,100"), "appears twice"),
        (("--mode", "fast"), "--mode"),
        (("--max-time", "soon"), "--max-time"),
        (("--gpu-index", "3"), "--gpu-index: no GPU 3"),
    ],
)
def test_bad_options_are_usage_errors(cli, tmp_path: Path, args, message) -> None:
    q = _queue(tmp_path, [_sim("a", "toy-mlp_32")])
    code, out, err = cli("profile", str(q), *GPU, *args, "--json")
    assert code == 2
    env = parse_envelope(out)
    assert env["errors"][0]["code"] == "USAGE"
    assert message in env["errors"][0]["message"]


def test_a_partitioned_gpu_is_refused(cli, tmp_path: Path, state_dir: Path) -> None:
    code, out, err = cli("apply", "3g.20gb", "4g.20gb", *GPU, "--json")
    if code != 0:
        pytest.skip(f"miso apply not available here: {err.strip()[:80]}")
    q = _queue(tmp_path, [_sim("a", "toy-mlp_32")])
    code, out, _ = cli("profile", str(q), *GPU, "--json")
    assert code == 8
    assert "full-size instance" in parse_envelope(out)["errors"][0]["message"]


# -- profiling after a run: an idle GPU split into MIG instances -------------------------


def _layout(state_dir: Path) -> str:
    from miso_cli.gpu.nvml import open_driver

    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        return drv.current_layout(0).name
    finally:
        drv.close()


def _split(cli) -> str:
    code, _, err = cli("apply", *GPU, "3g.20gb", "2g.10gb", "2g.10gb")
    assert code == 0, err
    return "3g.20gb+2g.10gb+2g.10gb"


def test_a_split_idle_gpu_is_refused_without_consent(cli, tmp_path: Path, state_dir) -> None:
    _split(cli)
    before = _layout(state_dir)
    q = _queue(tmp_path, [_sim("mlp", "toy-mlp_32")])
    code, out, _ = cli("profile", str(q), *GPU, *FAST, "--json")  # not a terminal: no question
    assert code == 8
    err = parse_envelope(out)["errors"][0]
    assert err["code"] == "GPU_BUSY" and "--reset-layout" in err["hint"]
    assert _layout(state_dir) == before


def test_reset_layout_profiles_on_the_whole_gpu_and_restores(cli, tmp_path, state_dir) -> None:
    _split(cli)
    before = _layout(state_dir)
    q = _queue(tmp_path, [_sim("mlp", "toy-mlp_32")])
    code, out, err = cli(
        "profile", str(q), *GPU, *FAST, "--levels", "100,50", "--reset-layout", "--json"
    )
    assert code == 0, out + err
    data = parse_envelope(out)["data"]
    assert data["layout_reset"] == {
        "gpu_index": 0, "previous": before, "profiled_on": "7g.40gb", "restored": True,
    }  # fmt: skip
    assert data["measured"] == 1 and data["profiles"][0]["failed_levels"] == []
    assert _layout(state_dir) == before
    # `miso plan --profile` offers the same: here the profile is stored, nothing to do.
    code, out, _ = cli("plan", str(q), *GPU, "--profile", "--reset-layout", "--json")
    assert code == 0, out
    assert _layout(state_dir) == before


def test_ctrl_c_while_profiling_restores_the_layout(cli, tmp_path, state_dir) -> None:
    from miso_cli.commands.profile import profile_queue
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.runtime.journal import RunLock
    from miso_cli.runtime.profiler import ProfileSettings
    from miso_cli.spec.queue import load_queue

    _split(cli)
    before = _layout(state_dir)
    jobs = load_queue(_queue(tmp_path, [_sim("mlp", "toy-mlp_32")])).jobs
    seen: list[str] = []

    def sink(ev) -> None:
        seen.append(ev.kind)
        if ev.kind == "poll":
            raise KeyboardInterrupt  # Ctrl-C in the middle of a level

    asked = []
    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        settings = ProfileSettings(mode="solo", levels=(100.0,), min_steps=5, speedup=20.0)
        with pytest.raises(KeyboardInterrupt):
            profile_queue(
                drv, jobs, state_dir, settings, sink=sink,
                consent=lambda offer: asked.append(offer.question()) or True,
            )  # fmt: skip
        assert drv.processes(0) == []
    finally:
        drv.close()
    assert "poll" in seen and "3g.20gb+2g.10gb+2g.10gb" in asked[0]
    assert _layout(state_dir) == before
    lock = RunLock(state_dir)  # released: a run may start
    lock.acquire()
    lock.release()


def test_a_split_gpu_with_processes_is_never_reset(cli, tmp_path, state_dir) -> None:
    import os

    from miso_cli.gpu.nvml import open_driver
    from miso_cli.gpu.sim import simnvml

    _split(cli)
    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        uuid = next(m.uuid for m in drv.instances(0))
        path = drv.sim_state_path
    finally:
        drv.close()
    simnvml.attach_process(path, uuid, os.getpid(), 100)
    try:
        q = _queue(tmp_path, [_sim("mlp", "toy-mlp_32")])
        code, out, _ = cli("profile", str(q), *GPU, *FAST, "--reset-layout", "--json")
    finally:
        simnvml.detach_process(path, os.getpid())
    assert code == 8
    assert f"pid {os.getpid()}" in parse_envelope(out)["errors"][0]["message"]
    assert _layout(state_dir) == "3g.20gb+2g.10gb+2g.10gb"
