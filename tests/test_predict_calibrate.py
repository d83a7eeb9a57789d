"""``miso calibrate`` end to end on a simulated A100: profile, measure each slice, restore, fit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
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
    # Paced by the catalog (20/24/26/34/58 ms): the measured ratios follow it.
    assert float(mlp["mig_3g"]) / float(mlp["mig_7g"]) == pytest.approx(26 / 20, rel=0.15)
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
    pred = load_predictor(state_dir=state_dir)
    assert pred.source == "model" and pred.metadata["driver"] is not None


def test_calibrate_refuses_a_busy_gpu(cli, state_dir: Path) -> None:
    from miso_cli.gpu import simnvml

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
