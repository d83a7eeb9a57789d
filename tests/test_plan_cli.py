"""``miso plan`` through the CLI: the plan format that ``miso apply`` reads."""

from __future__ import annotations

from pathlib import Path

from miso_cli.gpu.layouts import Layout, Slice
from tests.conftest import ROOT, parse_envelope

QUEUE = str(ROOT / "examples" / "quickstart.toml")


def test_missing_profiles_ask_for_consent(cli) -> None:
    code, out, err = cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--json")
    assert code == 2
    env = parse_envelope(out)
    assert "no fresh profile" in env["errors"][0]["message"]
    assert "miso profile" in env["errors"][0]["hint"]


def test_plan_after_profiling_prints_the_plan_format(cli) -> None:
    code, out, _ = cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--profile", "--json")
    assert code == 0, out
    data = parse_envelope(out)["data"]
    assert data["objective"] == "jct" and data["policy"] == "miso+"
    (gpu,) = data["gpus"]
    assert gpu["index"] == 0 and gpu["model"] == "a100-40gb" and gpu["mode"] == "mig"
    slices = [
        Slice(i["placement"]["start"], i["placement"]["size"], i["profile"], i["slices"])
        for i in gpu["layout"]["instances"]
    ]
    layout = Layout.of(slices)
    assert layout.to_json() == gpu["layout"]
    placed = {a["job"] for a in gpu["assignment"]}
    assert placed | set(data["waiting"]) == {"cnn-small", "bert", "mlp", "cnn-large"}
    for a in gpu["assignment"]:
        assert any(s.profile == a["profile"] and s.start == a["placement"]["start"] for s in slices)
        assert a["predicted_relative_step_time"] >= 0.9
    pred = data["predicted"]
    assert pred["mean_jct_s"] > 0 and pred["nopart_mean_jct_s"] > 0
    # Another objective on the same queue.
    code, out, _ = cli(
        "plan", QUEUE, "--gpu", "sim:a100-40gb", "--profile", "--objective", "miso", "--json"
    )
    assert code == 0
    assert parse_envelope(out)["data"]["objective"] == "miso"


def test_bad_inputs(cli, tmp_path: Path) -> None:
    bad = tmp_path / "q.toml"
    bad.write_text("version = 1\n[[job]]\nname = 3\n")
    assert cli("plan", str(bad), "--gpu", "sim:a100-40gb")[0] == 3
    assert cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--objective", "fast")[0] == 2


# -- labels and the predictor it used, from stored profiles (no profiling run) -------------


def _store_profiles(state_dir: Path, queue: Path, gpu: str = "sim:a100-40gb") -> None:
    """A fresh co-located profile for every job of ``queue``, as `miso profile` stores it."""
    import time

    from miso_cli.gpu.nvml import open_driver
    from miso_cli.spec import profiles_store as store
    from miso_cli.spec.queue import load_queue

    drv = open_driver(gpu, state_dir)
    try:
        model, name, driver = drv.gpu_model(0).key, drv.gpu(0).name, drv.driver_version()
    finally:
        drv.close()
    jobs = load_queue(queue).jobs
    fps = [store.fingerprint(j) for j in jobs]
    now = time.time()
    for k, (job, fp) in enumerate(zip(jobs, fps, strict=True)):
        base = 0.05 * (k + 1)
        levels = [
            {"level": lv, "status": "ok", "step_time_s": base * f, "steps": 20}
            for lv, f in ((100.0, 1.0), (50.0, 1.3), (14.0, 3.0))
        ]
        store.save(
            state_dir,
            store.StoredProfile(
                fingerprint=fp, job=job.name, command=job.command, cwd=str(job.cwd),
                env=dict(job.env), gpu_model=model, gpu_name=name, driver_version=driver,
                mode="colocated", co_runners=[f for f in fps if f != fp], levels=levels,
                started_at=now - 10, finished_at=now - 5, simulated=True,
            ),
        )  # fmt: skip


def _queue(tmp_path: Path, jobs: list[tuple[str, int | None, str]]) -> Path:
    text = "version = 1\n"
    for name, steps, memory in jobs:
        text += f'[[job]]\nname = "{name}"\ncommand = ["python", "train.py", "{name}"]\n'
        text += f'memory = "{memory}"\n' + (f"steps = {steps}\n" if steps else "")
    (tmp_path / "train.py").write_text("")
    path = tmp_path / f"q{len(list(tmp_path.glob('q*.toml')))}.toml"
    path.write_text(text)
    return path


def test_plan_says_which_predictor_and_which_seconds(cli, state_dir: Path, tmp_path: Path) -> None:
    q = _queue(tmp_path, [("a", 100, "2GiB"), ("b", 200, "2GiB")])
    _store_profiles(state_dir, q)
    code, out, err = cli("plan", str(q), "--gpu", "sim:a100-40gb", "--json")
    assert code == 0, out
    data = parse_envelope(out)["data"]
    assert data["predictor"]["model_used"] == "prior"
    assert data["predictor"]["description"].startswith("the shipped a100-40gb prior")
    assert data["predicted"]["time_base"] == "catalog"
    code, out, err = cli("plan", str(q), "--gpu", "sim:a100-40gb")
    assert code == 0
    assert "predictor: the shipped a100-40gb prior" in err
    assert "s of catalog time" in out and "--speedup" in out


def test_plan_on_an_h100_says_it_uses_the_a100_prior(cli, state_dir: Path, tmp_path: Path) -> None:
    q = _queue(tmp_path, [("a", 100, "2GiB")])
    _store_profiles(state_dir, q, gpu="sim:h100-80gb")
    code, out, err = cli("plan", str(q), "--gpu", "sim:h100-80gb")
    assert code == 0, err
    assert "a100-40gb prior, carried over to h100-80gb" in " ".join(err.split())


def test_unknown_completion_names_the_real_reason(cli, state_dir: Path, tmp_path: Path) -> None:
    # Every job has steps; one needs more memory than any small slice the plan picks.
    jobs = [(f"s{i}", 100, "2GiB") for i in range(6)] + [("big", 100, "30GiB")]
    q = _queue(tmp_path, jobs)
    _store_profiles(state_dir, q)
    code, out, _ = cli("plan", str(q), "--gpu", "sim:a100-40gb", "--json")
    assert code == 0, out
    data = parse_envelope(out)["data"]
    assert data["waiting"] == ["big"] and data["predicted"]["mean_jct_s"] is None
    reason = data["predicted"]["unknown_reason"]
    assert "steps" not in reason and "fits waiting big" in reason
    q2 = _queue(tmp_path, [("a", None, "2GiB"), ("b", 50, "2GiB")])
    _store_profiles(state_dir, q2)
    code, out, _ = cli("plan", str(q2), "--gpu", "sim:a100-40gb")
    assert code == 0
    assert "unknown (give each job 'steps': a has none)" in out


def test_a_cut_list_of_jobs_without_profiles_says_so(cli, tmp_path: Path) -> None:
    q = _queue(tmp_path, [(f"job{i}", 10, "1GiB") for i in range(7)])
    code, out, _ = cli("plan", str(q), "--gpu", "sim:a100-40gb", "--json")
    assert code == 2
    msg = parse_envelope(out)["errors"][0]["message"]
    assert "no fresh profile for 7 job(s) (job0, job1, job2, job3, job4, ...)" in msg
