"""miso run with the dynamic policies: MPS targets, profiling, moves, observations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from miso_cli.catalog import load_catalog
from miso_cli.gpu import simmps

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"
CATALOG = load_catalog(ROOT / "examples" / "catalog.csv")


# ---------------------------------------------------------------- the synthetic job under MPS


def _sim_job_under_mps(env: dict[str, str], workload: str, steps: int, work: Path) -> Any:
    env = {**env, "MISO_PROGRESS_FILE": str(work.with_suffix(".progress"))}
    return subprocess.Popen(
        [
            sys.executable,
            str(SIM),
            "--workload",
            workload,
            "--steps",
            str(steps),
            "--checkpoint",
            str(work),
            "--speedup",
            "10",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _records(proc: Any, work: Path) -> list[dict[str, float]]:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "under MPS at 100%" in out
    return [json.loads(ln) for ln in work.with_suffix(".progress").read_text().splitlines()]


def _per_step_s(recs: list[dict[str, float]], lo: float = 0.0, hi: float = 1e300) -> float:
    """Seconds per step from a job's own progress records between ``lo`` and ``hi``."""
    inside = [r for r in recs if lo <= r["t"] <= hi]
    first, last = inside[0], inside[-1]
    return (last["t"] - first["t"]) / (last["step"] - first["step"])


def test_sim_train_under_mps_is_slowed_by_its_co_runners(state_dir: Path) -> None:
    from miso_cli.gpu import mps
    from miso_cli.gpu.nvml import open_driver

    drv = open_driver("sim:a100-40gb", state_dir)
    uuid = drv.gpu(0).uuid
    daemon = mps.open_daemon(state_dir, uuid, simulated=True, sim_state=drv.sim_state_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "MISO_"))}
    base["MISO_SIM_STATE"] = str(drv.sim_state_path)
    with daemon:
        env = {**base, **daemon.client_env(100)}
        solo = _sim_job_under_mps(env, "toy-cnn_256", 60, state_dir / "a.json")
        solo_s = _per_step_s(_records(solo, state_dir / "a.json"))
        pair = [
            _sim_job_under_mps(env, "toy-cnn_256", 150, state_dir / f"p{i}.json") for i in range(2)
        ]
        recs = [_records(p, state_dir / f"p{i}.json") for i, p in enumerate(pair)]
    # only while both run: from the later start to the earlier end
    lo, hi = max(r[0]["t"] for r in recs), min(r[-1]["t"] for r in recs)
    both = [_per_step_s(r, lo, hi) for r in recs]
    w = CATALOG["toy-cnn_256"]
    model_solo = simmps.step_time_ms(w, 100) / 10_000
    model_pair = simmps.step_time_ms(w, 100, [(w, 100.0)]) / 10_000
    assert solo_s == pytest.approx(model_solo, rel=0.2)
    for per_step in both:
        # 1 + 0.39 x (200 - 100) / 100: co-located at 100 % each, 39 % slower than alone
        assert per_step == pytest.approx(model_pair, rel=0.15)
        assert per_step > solo_s * 1.2
