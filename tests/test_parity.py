"""Parity: the same jobs through ``miso run`` (real processes) and ``miso simulate``.

A queue of examples/sim_train.py jobs with an arrival on two simulated A100s, and the
same jobs as a trace with the matching catalog. Both are the one engine
(:mod:`miso_cli.engine.core`) driven by two backends, so they make the same decisions in
the same order (layouts, assignments, profiling phases: miso's), count the same
reconfigurations and migrations, and the mean JCT agrees within 10 % once the run's wall
seconds are scaled by its speed-up. One short run with real processes per policy; no
assertion on a wall-clock duration (the run's figures are compared with the model's).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miso_cli.gpu.profiles import MODELS
from miso_cli.policy import registry
from miso_cli.sim.simulator import SimConfig, TraceJob, make_predict, simulate
from miso_cli.spec.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"
SPEEDUP = 10.0
# Catalog seconds a restart costs beyond a start (the checkpoint on the stop signal, the
# exit seen): told to both engines' policies and charged by the simulator.
RESTART_S = 2.0
# name, workload, steps, arrival (catalog seconds). Chosen so that no decision is a near
# tie: the simulator decides the same for arrivals 3 s earlier or later, starts of
# 0-30 s (a loaded machine's spread) and, for miso, 3 % noise on what profiling measures
# and levels 0-10 s longer to measure.
JOBS = [
    ("j0", "toy-mlp_32", 3000, 0.0),
    ("j1", "toy-cnn_64", 2500, 0.0),
    ("j2", "toy-mlp_32", 1500, 40.0),
]
JOBS_BY_POLICY = {  # miso profiles the newcomer with j0 under MPS, then splits GPU 0
    "miso": [
        ("j0", "toy-mlp_32", 3000, 0.0),
        ("j1", "toy-cnn_64", 2500, 0.0),
        ("j2", "toy-mlp_32", 1500, 20.0),
    ]
}


def _queue(path: Path, jobs: list[tuple[str, str, int, float]]) -> None:
    lines = ["version = 1"]
    for name, workload, steps, arrival in jobs:
        cmd = [sys.executable, str(SIM), "--workload", workload, "--steps", str(steps)]
        lines += ["[[job]]", f'name = "{name}"', f"command = {json.dumps(cmd)}", f"steps = {steps}"]
        lines.append('memory = "4GiB"')
        if arrival:
            lines.append(f"arrival = {arrival / SPEEDUP}")
        lines += ["[job.checkpoint]", 'signal = "SIGUSR1"', 'grace = "5s"']
    path.write_text("\n".join(lines) + "\n")


def _start_s() -> float:
    """What a job's start costs ``miso run`` on this machine now, in catalog seconds: the
    wrapper's and the job's Python start, and one look of the run's loop (0.2 s). The
    simulator is told it, as it is told the restart cost (a calibration, not an assertion)."""
    cmd = [sys.executable, str(SIM), "--workload", "toy-mlp_32", "--steps", "1"]
    took = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=60, check=True)
        took.append(time.perf_counter() - t0)
    return (2 * statistics.median(took) + 0.2) * SPEEDUP


def _decisions(records: list[dict]) -> list[tuple]:
    return [
        (
            r["gpu"],
            r["mode"],
            r["layout"],
            tuple(sorted(r["assignment"].items())),
            r.get("profile_s"),
        )
        for r in records
    ]


@pytest.mark.parametrize("policy", ["static", "miso+", "miso"])
def test_run_and_simulate_decide_alike(tmp_path: Path, policy: str) -> None:
    jobs = JOBS_BY_POLICY.get(policy, JOBS)
    q = tmp_path / "queue.toml"
    _queue(q, jobs)
    state = tmp_path / "state"
    env = dict(os.environ, MISO_STATE_DIR=str(state))
    before = _start_s()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "miso_cli",
            "run",
            str(q),
            "--gpu",
            "sim:a100-40gbx2",
            "--policy",
            policy,
            "--speedup",
            str(SPEEDUP),
            "--restart-cost",
            str(RESTART_S),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    # A start's cost measured on either side of the run: the load the run met, on a
    # machine whose load changes, is nearer their mean than either.
    start_s = (before + _start_s()) / 2
    run_id = (state / "runs" / "latest").read_text().strip()
    journal = json.loads((state / "runs" / run_id / "journal.json").read_text())
    summary = json.loads(r.stdout.strip().splitlines()[-1])["data"]["summary"]

    cat = load_catalog(ROOT / "examples" / "catalog.csv")
    trace = [
        TraceJob(n, arr, w, steps * cat[w].step_time_ms(7) / 1000.0)  # type: ignore[operator]
        for n, w, steps, arr in jobs
    ]
    pol = registry.get(policy)
    predict = None
    if getattr(pol, "knowledge", "none") == "profile":
        predict = make_predict(None, MODELS["a100-40gb"], state)[0]  # the run's predictor
    res = simulate(
        trace,
        cat,
        [MODELS["a100-40gb"]] * 2,
        pol,
        predict=predict,
        # The run's restart (told to both engines as RESTART_S), every start's Python
        # start, and a simulated MIG change (about 0.4 wall seconds with its first launch).
        config=SimConfig(
            reconfig_s=4.0, restart_costs=RESTART_S, profile_noise=0.0, start_s=start_s
        ),
    )
    assert _decisions(journal["decisions"]) == _decisions(res.targets)
    assert summary["reconfigurations"] == res.reconfigurations
    assert summary["migrations"] == res.migrations
    run_jct = summary["mean_jct_s"] * SPEEDUP
    sim_jct = res.summary()["mean_jct_s"]
    # miso's profiling phase under miso run also waits for the simulated MPS daemon to
    # start (about a wall second) and for every level's step times to be measured
    # (engine.core: wait_for_measurement), which the simulator does not model: its JCT is
    # held to the same decisions, not to 10 %.
    tolerance = 0.10 if policy != "miso" else 0.35
    assert run_jct == pytest.approx(sim_jct, rel=tolerance), (run_jct, sim_jct)
