"""``miso calibrate`` end to end on a simulated A100: profile, measure each slice, restore, fit."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from conftest import parse_envelope

from miso_cli.gpu.nvml import open_driver
from miso_cli.predict import load_predictor


def test_calibrate_measures_restores_and_fits(cli, state_dir: Path) -> None:
    code, out, err = cli("apply", "--gpu", "sim:a100-40gb", "3g.20gb", "2g.10gb", "2g.10gb")
    assert code == 0, err
    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        before = drv.current_layout(0)
    finally:
        drv.close()

    code, out, err = cli(
        "calibrate", "--gpu", "sim:a100-40gb", "--speedup", "100", "--estimators", "ridge",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    data = parse_envelope(out)["data"]
    assert data["restored"] is True
    assert data["original_layout"] == before.name
    jobs = data["jobs"]
    assert len(jobs) == 5
    # examples/catalog.csv: toy-gpt_16 fits neither 2g nor 1g; the others fit 2g.
    assert jobs["cal-toy-gpt_16"]["2g"] == "oom" and jobs["cal-toy-gpt_16"]["1g"] == "oom"
    assert jobs["cal-toy-mlp_32"]["1g"] == "ok"
    assert all(s["mps_solo"] == "ok" and s["mps_mix"] == "ok" for s in jobs.values())

    with open(data["pairs"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == data["rows"] == 10  # each job alone, and in one mix of five
    solo = {r["workload"]: r for r in rows if r["jobs_in_mix"] == "1"}
    mlp = solo["toy-mlp_32"]
    # Measured step times (wall time on a shared machine: only their presence is asserted).
    assert all(float(mlp[f"mig_{g}g"]) > 0 for g in (7, 4, 3, 2, 1))
    assert solo["toy-gpt_16"]["mig_2g"] == ""

    fit = data["fit"]
    assert fit["model"] == str(state_dir / "models" / "a100-40gb.joblib")
    assert {"mig_4g", "mig_3g"} <= set(fit["targets"])

    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        assert drv.current_layout(0) == before
        assert drv.processes(0) == []
    finally:
        drv.close()
    # The fit replaces the shipped prior only if the same held-out measure says it is better.
    sel = fit["selection"]
    assert sel["rows"] == 10 and sel["cv"] == "leave-one-family-out"
    assert set(sel["mape"]["prior"]) >= {"mig_4g", "mig_3g", "mean"}
    means = {c: m["mean"] for c, m in sel["mape"].items() if m}
    assert sel["chosen"] == min(
        means, key=lambda c: (means[c], ("prior", "blend", "fitted").index(c))
    )
    pred = load_predictor(state_dir=state_dir)
    assert pred.metadata["model_used"] == sel["chosen"]
    assert "held-out error" in pred.metadata["description"]


def test_calibrate_refuses_a_busy_gpu(cli, state_dir: Path) -> None:
    from miso_cli.gpu.sim import simnvml

    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        uuid = drv.gpu(0).uuid
        path = drv.sim_state_path
    finally:
        drv.close()
    import os

    simnvml.attach_process(path, uuid, os.getpid(), 1000)
    try:
        code, out, _ = cli("calibrate", "--gpu", "sim:a100-40gb", "--json")
    finally:
        simnvml.detach_process(path, os.getpid())
    assert code == 8
    assert parse_envelope(out)["errors"][0]["code"] == "GPU_BUSY"


def test_profiler_measure_runs_jobs_side_by_side_on_mig_instances(cli, state_dir: Path) -> None:
    from miso_cli.predict.calibrate import synthetic_jobs
    from miso_cli.runtime.profiler import Profiler, ProfileSettings

    root = Path(__file__).resolve().parent.parent
    jobs = synthetic_jobs(root / "examples" / "catalog.csv", root / "examples" / "sim_train.py")
    mlp = next(j for j in jobs if j.workload == "toy-mlp_32")
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "4g.20gb", "3g.20gb")
    assert code == 0, err
    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        by_size = {m.slice.slices: m.uuid for m in drv.instances(0)}
        settings = ProfileSettings(
            mode="solo", levels=(100.0,), warmup_steps=2, min_steps=10, max_level_s=30.0,
            speedup=100.0, poll_s=0.1, gpu_index=0,
        )  # fmt: skip
        twin = dataclasses.replace(mlp, name=mlp.name + "-twin")
        got = Profiler(drv, state_dir, settings).measure([(mlp, by_size[3]), (twin, by_size[4])])
        assert drv.processes(0) == []  # stopped and gone
    finally:
        drv.close()
    assert [(m.job.name, m.device) for m in got] == [
        (mlp.name, by_size[3]),
        (twin.name, by_size[4]),
    ]
    assert all(m.result.status == "ok" and m.result.steps >= 10 for m in got)
    # Each job paced itself by the catalog for the instance it was given (3g 26 ms, 4g 24 ms).
    # The measured step time is wall time on a shared machine, so only the pacing each job
    # chose is asserted (its log), and that the measurement is scaled back from the speed-up:
    # one catalog step is 0.26 ms of wall time at x100, the measurement is in catalog seconds.
    work = state_dir / "profiles" / "work"
    assert "on 3g.20gb: 26.0 ms/step" in (work / mlp.name / "job.log").read_text()
    assert "on 4g.20gb: 24.0 ms/step" in (work / twin.name / "job.log").read_text()
    assert all(m.result.step_time_s is not None and m.result.step_time_s > 0.001 for m in got)
