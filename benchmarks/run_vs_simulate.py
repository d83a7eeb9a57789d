"""``miso run`` with real processes beside what ``miso simulate`` predicts for the same jobs.

Synthetic queues of ``examples/sim_train.py`` jobs (workloads of
``examples/catalog.csv``, seeded), with and without later arrivals, run by
``miso run`` on simulated GPUs under each policy; the same jobs as a trace go
through ``miso simulate``. Times of ``miso run`` are wall seconds times the
speed-up (catalog seconds), so both columns are in the same units. Printed: mean
JCT and makespan as ratios to ``nopart`` (run, simulated), and the absolute figures.

    python benchmarks/run_vs_simulate.py                     # 4, 8, 16 jobs + quickstart
    python benchmarks/run_vs_simulate.py --sizes 4 --speedup 20 --json out.json

The simulator is told what a restart and a reconfiguration cost ``miso run`` here:
``--restart-s`` and ``--reconfig-s`` wall seconds (a Python job's start and a
simulated MIG change), times the speed-up; ``miso run`` tells its policy the same
restart cost (``--restart-cost``), so both engines decide from the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from miso_cli.spec.catalog import load_catalog  # noqa: E402

CATALOG = ROOT / "examples" / "catalog.csv"
SIM_TRAIN = ROOT / "examples" / "sim_train.py"
POLICIES = ("nopart", "static", "miso", "miso+")


def synthetic(n: int, arrivals: bool, seed: int) -> list[dict[str, Any]]:
    """``n`` jobs: workload, catalog seconds on a whole GPU, arrival (catalog s), memory."""
    cat = load_catalog(CATALOG)
    rng = random.Random(seed * 1000 + n * 10 + int(arrivals))
    names = sorted(cat.workloads)
    jobs = []
    t = 0.0
    for i in range(n):
        w = cat[rng.choice(names)]
        step_s = (w.step_time_ms(7) or 1.0) / 1000.0
        duration = rng.uniform(40.0, 160.0)
        steps = max(20, int(duration / step_s))
        if arrivals and i:
            t += rng.expovariate(1.0 / 20.0)
        jobs.append(
            {
                "name": f"j{i:02d}",
                "workload": w.name,
                "steps": steps,
                "duration_7g_s": steps * step_s,
                "arrival_s": round(t, 1),
                "memory_mb": round(w.memory_need_mb()),  # the need the simulator gives it
            }
        )
    return jobs


def quickstart() -> list[dict[str, Any]]:
    """The jobs of examples/quickstart.toml, as this benchmark describes jobs."""
    from miso_cli.spec.queue import load_queue

    cat = load_catalog(CATALOG)
    out = []
    for spec in load_queue(ROOT / "examples" / "quickstart.toml").jobs:
        argv = list(spec.command)
        w = cat[argv[argv.index("--workload") + 1]]
        steps = int(argv[argv.index("--steps") + 1])
        out.append(
            {
                "name": spec.name,
                "workload": w.name,
                "steps": steps,
                "duration_7g_s": steps * (w.step_time_ms(7) or 1.0) / 1000.0,
                "arrival_s": 0.0,
                "memory_mb": spec.memory_mb,
                "priority": spec.priority,
                "checkpoint": spec.checkpointable,
                "retries": spec.retries,
            }
        )
    return out


def write_queue(path: Path, jobs: list[dict[str, Any]], speedup: float) -> None:
    lines = ["version = 1"]
    for j in jobs:
        cmd = [sys.executable, str(SIM_TRAIN), "--workload", j["workload"], "--steps"]
        cmd.append(str(j["steps"]))
        lines += ["[[job]]", f'name = "{j["name"]}"', f"command = {json.dumps(cmd)}"]
        lines.append(f"steps = {j['steps']}")
        if j.get("memory_mb"):
            lines.append(f"memory = {int(j['memory_mb'])}")
        if j.get("priority"):
            lines.append(f"priority = {j['priority']}")
        if j.get("retries"):
            lines.append(f"retries = {j['retries']}")
        if j["arrival_s"]:
            lines.append(f'arrival = "{j["arrival_s"] / speedup:.3f}s"')
        if j.get("checkpoint", True):
            lines += ["[job.checkpoint]", 'signal = "SIGUSR1"', 'grace = "5s"']
    path.write_text("\n".join(lines) + "\n")


def run_real(
    jobs: list[dict[str, Any]], policy: str, gpu: str, speedup: float, restart_cost: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="miso-rvs-") as tmp:
        q = Path(tmp) / "queue.toml"
        write_queue(q, jobs, speedup)
        state = Path(tmp) / "state"
        cmd = [sys.executable, "-m", "miso_cli", "run", str(q), "--gpu", gpu, "--json"]
        cmd += ["--policy", policy, "--speedup", repr(speedup), "--state-dir", str(state)]
        cmd += ["--restart-cost", repr(restart_cost)]  # what the policy is told, as simulated
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
        wall = time.monotonic() - started
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines:
            return {"error": (r.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
        data = json.loads(lines[-1])["data"]
        s = data["summary"]
        return {
            "mean_jct_s": (s["mean_jct_s"] or 0.0) * speedup,
            "makespan_s": s["makespan_s"] * speedup,
            "reconfigurations": s.get("reconfigurations"),
            "migrations": s.get("migrations"),
            "finished": s["finished"],
            "wall_s": wall,
        }


def run_sim(
    jobs: list[dict[str, Any]], policy: str, gpu: str, restart_s: float, reconfig_s: float
) -> dict[str, Any]:
    from miso_cli.commands.simulate import simulated_gpus as _gpus
    from miso_cli.policy import registry
    from miso_cli.sim.simulator import SimConfig, TraceJob, make_predict, simulate

    cat = load_catalog(CATALOG)
    gpus = _gpus(gpu)
    trace = [TraceJob(j["name"], j["arrival_s"], j["workload"], j["duration_7g_s"]) for j in jobs]
    pol = registry.get(policy)
    predict = None
    if getattr(pol, "knowledge", "none") == "profile":
        with tempfile.TemporaryDirectory() as tmp:
            predict, _ = make_predict(None, gpus[0], Path(tmp))
    res = simulate(
        trace,
        cat,
        gpus,
        pol,
        predict=predict,
        config=SimConfig(restart_costs=restart_s, reconfig_s=reconfig_s),
    )
    s = res.summary()
    return {
        "mean_jct_s": s["mean_jct_s"],
        "makespan_s": s["makespan_s"],
        "reconfigurations": s["reconfigurations"],
        "migrations": s["migrations"],
    }


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:5.2f}" if a is not None and b else "  -  "


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,8,16", help="queue sizes (comma-separated)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--gpu", default="sim:a100-40gb")
    ap.add_argument("--speedup", type=float, default=20.0)
    ap.add_argument("--restart-s", type=float, default=0.5, help="wall seconds of a restart")
    ap.add_argument("--reconfig-s", type=float, default=0.2, help="wall seconds of a MIG change")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-quickstart", action="store_true")
    ap.add_argument("--no-arrivals", action="store_true", help="only queues without arrivals")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    queues: list[tuple[str, list[dict[str, Any]]]] = []
    if not args.no_quickstart:
        queues.append(("quickstart", quickstart()))
    for n in [int(x) for x in args.sizes.split(",") if x]:
        for arrivals in (False,) if args.no_arrivals else (False, True):
            label = f"{n} jobs" + (" + arrivals" if arrivals else "")
            queues.append((label, synthetic(n, arrivals, args.seed)))
    rows = []
    print(
        f"{'queue':<20} {'policy':<7} {'JCT run':>8} {'JCT sim':>8} {'span run':>8} "
        f"{'span sim':>8}   mean JCT s run/sim   makespan s run/sim   wall s",
        flush=True,
    )
    for label, jobs in queues:
        results = {}
        for pol in policies:
            real = run_real(jobs, pol, args.gpu, args.speedup, args.restart_s * args.speedup)
            sim = run_sim(
                jobs, pol, args.gpu, args.restart_s * args.speedup, args.reconfig_s * args.speedup
            )
            results[pol] = (real, sim)
        base_r, base_s = results.get("nopart", ({}, {}))
        for pol, (real, sim) in results.items():
            row = {"queue": label, "policy": pol, "run": real, "simulate": sim}
            rows.append(row)
            if "error" in real:
                print(f"{label:<20} {pol:<7} run failed: {real['error']}", flush=True)
                continue
            print(
                f"{label:<20} {pol:<7} "
                f"{ratio(real['mean_jct_s'], base_r.get('mean_jct_s')):>8} "
                f"{ratio(sim['mean_jct_s'], base_s.get('mean_jct_s')):>8} "
                f"{ratio(real['makespan_s'], base_r.get('makespan_s')):>8} "
                f"{ratio(sim['makespan_s'], base_s.get('makespan_s')):>8}   "
                f"{real['mean_jct_s']:8.1f} / {sim['mean_jct_s']:8.1f}   "
                f"{real['makespan_s']:8.1f} / {sim['makespan_s']:8.1f}   {real['wall_s']:6.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
