"""What it costs to learn how 7 jobs run: MPS co-located vs MPS solo vs trying MIG layouts.

Two parts:

1. Measured: ``miso profile`` on the simulated A100 for a queue of 7 synthetic
   jobs, co-located and solo, with the default levels and settings (20 measured
   steps after 3 warm-up steps per level). The synthetic jobs run ``--speedup``
   times faster than the catalog, so the wall time shown is that of miso's own
   machinery (launching, polling, stopping) plus the scaled steps.

2. Modelled for a real GPU, from the step times of the same catalog: every
   start of a job costs ``--startup`` seconds (framework import, CUDA context,
   data loaders) plus its warm-up steps; a level lasts until its slowest job
   has its measured steps (co-located: under the simulated interference), at
   most 30 s. Trying MIG layouts directly means, per layout: reconfiguring the
   GPU (``--reconfig`` seconds), checkpointing and restoring every job (the
   MISO paper's measured mean, 13.25 s, in place of the start-up), then
   warm-up and measurement on the slices. The layouts tried are the A100
   layouts with at most 7 instances that are maximal (no free slice left), as
   an exhaustive search would.

    python benchmarks/profile_cost.py [--startup 20] [--reconfig 5] [--speedup 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "a100-40gb" / "catalog.csv"
CHECKPOINT_RESTORE_S = 13.25  # mean of the MISO artifact's per-model checkpoint costs
WARMUP, MIN_STEPS, CAP_S = 3, 20, 30.0


def pick_workloads(catalog) -> list[str]:  # type: ignore[no-untyped-def]
    """Seven workloads of distinct families first, then any, in catalog order."""
    names = list(catalog.workloads)
    chosen, families = [], set()
    for n in names:
        fam = catalog[n].family
        if fam not in families:
            chosen.append(n)
            families.add(fam)
    for n in names:
        if len(chosen) >= 7:
            break
        if n not in chosen:
            chosen.append(n)
    return chosen[:7]


def queue_text(workloads: list[str], catalog_path: Path) -> str:
    lines = ["version = 1"]
    for i, w in enumerate(workloads):
        cmd = [sys.executable, "sim_train.py", "--workload", w, "--steps", "1000000"]
        cmd += ["--catalog", str(catalog_path)]
        lines += [
            "[[job]]",
            f'name = "j{i}-{w}"',
            f"command = {json.dumps(cmd)}",
            f'cwd = "{ROOT / "examples"}"',
            f'workload = "{w}"',
        ]
    return "\n".join(lines) + "\n"


def measured(queue: Path, mode: str, speedup: float) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="miso-bench-") as state:
        env = dict(os.environ, MISO_STATE_DIR=state)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "miso_cli", "profile", str(queue), "--gpu", "sim:a100-40gb",
             "--mode", mode, "--speedup", str(speedup), "--json"],
            env=env, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    if not done.stdout.strip():
        raise SystemExit(f"miso profile failed: {done.stderr.strip()[-500:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--startup", type=float, default=20.0, help="seconds to start a job")
    ap.add_argument("--reconfig", type=float, default=5.0, help="seconds per MIG reconfiguration")
    ap.add_argument("--speedup", type=float, default=20.0, help="synthetic jobs' speed-up")
    ap.add_argument("--skip-measured", action="store_true", help="only the model")
    args = ap.parse_args()

    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.profiles import model
    from miso_cli.gpu.sim import simmps
    from miso_cli.runtime.profiler import DEFAULT_LEVELS
    from miso_cli.spec.catalog import load_catalog

    cat_path = SHARED if SHARED.exists() else ROOT / "examples" / "catalog.csv"
    cat = load_catalog(cat_path)
    wls = pick_workloads(cat)
    jobs = [cat[w] for w in wls]
    print(f"catalog {cat_path}; jobs: {', '.join(wls)}")

    # ---- modelled on a real GPU
    def measure_s(step_ms: list[float]) -> float:
        return max(min((WARMUP + MIN_STEPS) * t / 1000, CAP_S) for t in step_ms)

    def level_s(step_ms: list[float]) -> float:
        return args.startup + measure_s(step_ms)

    colo = 0.0
    for pct in DEFAULT_LEVELS["colocated"]:
        colo += level_s(simmps.colocated_step_times_ms(jobs, pct))
    solo = sum(level_s([w.mps_step_time_ms(p)]) for w in jobs for p in DEFAULT_LEVELS["solo"])
    layouts = [
        lay for lay in enumerate_layouts(model("a100-40gb"))
        if len(lay.slices) <= 7
    ]  # fmt: skip
    mig = 0.0
    for lay in layouts:
        sizes = sorted((s.slices for s in lay.slices), reverse=True)
        placed = jobs[: len(sizes)]
        steps = [
            w.step_time_ms(g) or w.step_time_ms(7) or 0.0
            for w, g in zip(placed, sizes, strict=False)
        ]
        # the restore stands in for the job start: no separate startup
        mig += args.reconfig + CHECKPOINT_RESTORE_S + measure_s(steps)
    print()
    print(
        f"modelled on a real A100 (startup {args.startup:.0f} s per job start, "
        f"reconfiguration {args.reconfig:.0f} s):"
    )
    print(f"  MPS co-located, 3 levels, 7 jobs at once   {colo:8.0f} s")
    print(f"  MPS solo, 5 levels x 7 jobs                {solo:8.0f} s  ({solo / colo:.1f}x)")
    print(
        f"  MIG trial, {len(layouts)} layouts (reconfigure, checkpoint/restore, measure) "
        f"{mig:6.0f} s  ({mig / colo:.1f}x)"
    )

    if args.skip_measured:
        return
    with tempfile.TemporaryDirectory(prefix="miso-bench-q-") as tmp:
        queue = Path(tmp) / "queue.toml"
        queue.write_text(queue_text(wls, cat_path))
        print()
        print(f"measured: miso profile on sim:a100-40gb, synthetic jobs at {args.speedup:g}x speed")
        for mode in ("colocated", "solo"):
            wall, env = measured(queue, mode, args.speedup)
            profs = env["data"]["profiles"]
            ok = sum(1 for p in profs for s in p["status"].values() if s == "ok")
            total = sum(len(p["status"]) for p in profs)
            print(f"  {mode:10s} {wall:7.1f} s wall, {ok}/{total} job-levels ok")


if __name__ == "__main__":
    main()
