"""Planner speed and memory, from 8 GPUs x 56 jobs to 256 GPUs x 2,000 jobs.

    python benchmarks/planner.py [--repeat 5] [--sizes 8x56,32x224,64x500,128x1000,256x2000]
    python benchmarks/planner.py --objectives [--repeat 20]   # the 8 x 56 case per objective

Jobs get random but plausible predictions (relative step time growing as slices
shrink), memory needs and remaining work. Per size (GPUs x jobs) it times three
cases, each in a fresh child process so that the peak memory is the case's own:

``fresh``     an idle cluster, backfilling (``fifo=False``), objective ``jct``;
``fifo``      the same with strict first come first served (the FIFO-prefix test);
``re-plan``   a cluster already running a plan (jobs may keep their instances or
              move) with a tenth as many newcomers waiting, backfilling.

Prints the median and worst wall time per plan (the first call, which warms
imports and caches, is not counted), the jobs placed, the peak traced Python
memory (``tracemalloc``, numpy arrays included) over one extra call, and the
process's peak resident memory (``ru_maxrss``, HiGHS included). Aims: 128 x
1,000 under 1 s a plan, 256 x 2,000 under 3 s, under 500 MB.

``--objectives`` prints the historical 8 x 56 table: every objective, FIFO or
backfilling, fresh, re-plan, re-plan with eviction (aim < 50 ms).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miso_cli.gpu.profiles import MODELS  # noqa: E402
from miso_cli.planning.planner import PlanGpu, PlanJob, plan  # noqa: E402

A100 = MODELS["a100-40gb"]
SIZES = "8x56,32x224,64x500,128x1000,256x2000"


def jobs(rng: random.Random, n: int, prefix: str = "j") -> list[PlanJob]:
    out = []
    for i in range(n):
        r4 = rng.uniform(1.0, 1.8)
        r3 = r4 * rng.uniform(1.0, 1.2)
        r2 = r3 * rng.uniform(1.2, 1.8)
        r1 = r2 * rng.uniform(1.3, 2.0)
        rel = {7: 1.0, 4: r4, 3: r3, 2: r2, 1: r1}
        out.append(
            PlanJob(
                f"{prefix}{i}",
                rel,
                {g: 0.1 * v for g, v in rel.items()},
                memory_mb=rng.choice([None, None, 8000.0, 15000.0, 30000.0]),
                remaining_s=rng.uniform(100, 3000),
            )
        )
    return out


def _running(rng: random.Random, n_gpus: int, n_jobs: int) -> tuple[list[PlanGpu], list[PlanJob]]:
    """A cluster running a plan of ``n_jobs`` jobs, and a tenth as many newcomers waiting."""
    gpus = [PlanGpu(i, A100) for i in range(n_gpus)]
    js = jobs(rng, n_jobs)
    first = plan(gpus, js, objective="jct", fifo=False)
    where = first.placement()
    for j in js:
        if j.name in where:
            j.gpu, j.slice = where[j.name]
            j.waiting = False
    gpus = [PlanGpu(g.index, A100, g.layout) for g in first.gpus]
    return gpus, [j for j in js if j.name in where] + jobs(rng, max(1, n_jobs // 10), "n")


def case(n_gpus: int, n_jobs: int, kind: str, repeat: int) -> dict[str, object]:
    """Time ``repeat`` plans of one case (plus a warm-up) and measure one more for memory."""
    rng = random.Random(n_gpus * 100_003 + n_jobs)
    times: list[float] = []
    placed = 0

    def facts() -> tuple[list[PlanGpu], list[PlanJob]]:
        if kind == "re-plan":
            return _running(rng, n_gpus, n_jobs)
        return [PlanGpu(i, A100) for i in range(n_gpus)], jobs(rng, n_jobs)

    for r in range(repeat + 1):
        gpus, js = facts()
        t0 = time.perf_counter()
        res = plan(gpus, js, objective="jct", fifo=kind == "fifo", risk=0.5)
        if r:
            times.append(time.perf_counter() - t0)
        placed = len(res.placement())
    gpus, js = facts()
    tracemalloc.start()
    plan(gpus, js, objective="jct", fifo=kind == "fifo", risk=0.5)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "median_s": statistics.median(times),
        "max_s": max(times),
        "placed": placed,
        "traced_mb": traced / 2**20,
        "rss_mb": rss_kb / 1024,
    }


def scale(sizes: list[tuple[int, int]], repeat: int, kinds: list[str]) -> None:
    print(
        f"{'GPUs x jobs':>12s} {'case':>8s} {'median s':>9s} {'max s':>8s} "
        f"{'placed':>7s} {'traced MB':>10s} {'peak RSS MB':>12s}"
    )
    for n_gpus, n_jobs in sizes:
        for kind in kinds:
            out = subprocess.run(
                [sys.executable, __file__, "--child", f"{n_gpus}x{n_jobs}:{kind}:{repeat}"],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            print(
                f"{f'{n_gpus} x {n_jobs}':>12s} {kind:>8s} {r['median_s']:9.3f} {r['max_s']:8.3f} "
                f"{r['placed']:7d} {r['traced_mb']:10.1f} {r['rss_mb']:12.1f}",
                flush=True,
            )


def objectives(repeat: int) -> None:
    rng = random.Random(0)
    print(f"{'case':38s} {'median ms':>10s} {'max ms':>8s} {'placed':>7s}")
    worst = (0.0, "")
    for objective in ("miso", "throughput", "jct"):
        for fifo in (True, False):
            for running, evict in ((False, False), (True, False), (True, True)):
                times = []
                placed = 0
                for r in range(repeat + 1):
                    if running:
                        gpus, js = _running(rng, 8, 56)
                    else:
                        gpus, js = [PlanGpu(i, A100) for i in range(8)], jobs(rng, 56)
                    t0 = time.perf_counter()
                    res = plan(
                        gpus, js, objective=objective, fifo=fifo, risk=0.5, allow_evict=evict
                    )
                    if r:  # the first call warms caches and imports
                        times.append((time.perf_counter() - t0) * 1000)
                    placed = len(res.placement())
                case_name = f"{objective} {'fifo' if fifo else 'backfill'}" + (
                    (" re-plan evict" if evict else " re-plan") if running else " fresh"
                )
                print(
                    f"{case_name:38s} {statistics.median(times):10.1f} {max(times):8.1f} "
                    f"{placed:7d}"
                )
                worst = max(worst, (max(times), case_name))
    print(f"worst plan: {worst[0]:.1f} ms ({worst[1]}); target < 50 ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default=SIZES, help="comma-separated GPUSxJOBS")
    ap.add_argument("--cases", default="fresh,fifo,re-plan")
    ap.add_argument("--objectives", action="store_true", help="the 8 x 56 table per objective")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        size, kind, rep = args.child.split(":")
        g, j = (int(x) for x in size.split("x"))
        print(json.dumps(case(g, j, kind, int(rep))))
        return
    if args.objectives:
        objectives(args.repeat)
        return
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    scale(sizes, args.repeat, args.cases.split(","))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
