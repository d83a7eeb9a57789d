"""Mean JCT, makespan and the rest for every policy on the development trace (and synthetic ones).

    python benchmarks/simulate.py [--model MODEL.joblib] [--seeds 0,1,2] [--restart-cost 30]
    python benchmarks/simulate.py --model M --synthetic 6 --restart-cost 30,paper \
        --policies miso,oracle,miso+ [--workers 2]

Reads ``../shared/data/a100-40gb/{trace_dev,catalog}.csv``. ``miso`` and ``miso+``
see predictions from the fitted model given with ``--model`` (else the state
dir's, else the shipped prior). Prints one table per seed and the mean over
seeds, with the paper's reference figures (MISO: mean JCT 49% below nopart, 16%
below the best static partition, within 10% of oracle).

``--synthetic N`` also replays N traces generated deterministically from the
catalog (trace ``i``: 100 jobs, Poisson arrivals with the ``i``-th mean gap of
``--loads`` taken in turn, durations log-normal like the development trace's,
workloads drawn uniformly from the catalog, random seed ``i``), and prints for
every trace and restart-cost setting the ratios ``miso+/oracle`` and
``miso+/miso`` of mean JCT and makespan, then their geometric mean and worst
case over all traces: a change to a policy should help the aggregate without
hurting any one trace.

``--suite`` replays traces beyond the paper's, generated (seeded) from the catalog,
one condition changed at a time from a paper-like base (100 jobs per 8 GPUs,
Poisson gaps of 60 s with the first third at 30 s, log-normal durations, every
workload alike)::

    python benchmarks/simulate.py --suite [--conditions light,heavy,...] \
        [--mps-model optimistic,pessimistic] [--bound] [--policies ...]

conditions: arrivals ``light`` (150 s gaps), ``paper``, ``heavy`` (20 s),
``bursty`` (bursts of 12 jobs 5 s apart, 15 minutes between bursts); durations
``pareto`` (heavy-tailed, alpha 1.3, from 120 s, capped at 6 h) and ``bimodal``
(80 % of 2-5 min, 20 % of 1-2 h); mixes ``compute`` (the half of the workloads
that gain least from small slices) and ``lightmix`` (the other half); scale
``g32`` (400 jobs / 32 GPUs) and ``g64`` (800 jobs / 64 GPUs), arrivals scaled
with the GPUs; ``big`` (5,000 jobs / 64 GPUs, not in the default list: minutes
per policy). ``--isolate`` runs each simulation in a fresh process, so the
``peak MB`` column (peak resident memory) is that simulation's own. For each
trace and MPS model it prints every policy's mean JCT, its ratio to the best
*other* policy (below 1: it wins) and, with ``--bound``, its ratio to the lower
bound (:mod:`miso_cli.planning.bound`), then the geometric mean of miso+'s ratios.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from miso_cli.gpu.profiles import model as gpu_model  # noqa: E402
from miso_cli.policy import registry  # noqa: E402
from miso_cli.sim.simulator import (  # noqa: E402
    SimConfig,
    TraceJob,
    load_trace,
    make_predict,
    simulate,
)
from miso_cli.spec.catalog import load_catalog  # noqa: E402

POLICIES = ("nopart", "static", "mps", "miso", "oracle", "miso+")
# The development trace's run times: log-normal, log mean 5.89, log std. dev. 1.13
# (median about 6 minutes, mean about 13), from 2 minutes to under 2 hours.
DURATION_LOG_MEAN = 5.9
DURATION_LOG_SD = 1.1
DURATION_RANGE_S = (120.0, 6000.0)


def synthetic_trace(catalog, index: int, mean_gap_s: float, jobs: int = 100) -> list[TraceJob]:
    """Trace ``index``: Poisson arrivals, log-normal durations, uniform catalog workloads."""
    rng = random.Random(index)
    names = sorted(n for n, w in catalog.workloads.items() if w.step_time_ms(7) is not None)
    out = []
    t = 0.0
    lo, hi = DURATION_RANGE_S
    for k in range(jobs):
        t += rng.expovariate(1.0 / mean_gap_s)
        duration = min(hi, max(lo, rng.lognormvariate(DURATION_LOG_MEAN, DURATION_LOG_SD)))
        out.append(TraceJob(f"s{index}-{k}", round(t, 1), rng.choice(names), round(duration)))
    return out


SUITE = (
    "light",
    "paper",
    "heavy",
    "bursty",
    "pareto",
    "bimodal",
    "compute",
    "lightmix",
    "g32",
    "g64",
)
# Not in the default suite (minutes per policy): the issue's scale case.
SCALE = ("big",)


def _efficiency(w) -> float:
    """Best progress per GPU on a MIG instance (high: gains from small slices)."""
    from miso_cli.gpu.sim.simmps import mig_envelope

    hull = mig_envelope(w)
    return max(x / u for u, x in hull[1:])


def suite_trace(catalog, condition: str, seed: int = 0) -> tuple[list[TraceJob], int]:
    """The trace of one ``--suite`` condition and its number of GPUs (seeded, deterministic)."""
    rng = random.Random(f"{condition}-{seed}")
    names = sorted(n for n, w in catalog.workloads.items() if w.step_time_ms(7) is not None)
    if condition in ("compute", "lightmix"):
        ranked = sorted(names, key=lambda n: _efficiency(catalog[n]))
        half = len(ranked) // 2
        names = ranked[:half] if condition == "compute" else ranked[half:]
    gpus = {"g32": 32, "g64": 64, "big": 64}.get(condition, 8)
    jobs = 5000 if condition == "big" else 100 * gpus // 8
    scale = 8 / gpus  # arrivals per GPU as in the base trace
    out = []
    t = 0.0
    lo, hi = DURATION_RANGE_S
    for k in range(jobs):
        if condition == "light":
            gap = 150.0
        elif condition == "heavy":
            gap = 20.0
        else:
            gap = 30.0 if k < jobs // 3 else 60.0
        if condition == "bursty":
            t += 900.0 if k % 12 == 0 and k else 5.0
        else:
            t += rng.expovariate(1.0 / (gap * scale))
        if condition == "pareto":
            duration = min(6 * 3600.0, 120.0 * rng.paretovariate(1.3))
        elif condition == "bimodal":
            duration = rng.uniform(120, 300) if rng.random() < 0.8 else rng.uniform(3600, 7200)
        else:
            duration = min(hi, max(lo, rng.lognormvariate(DURATION_LOG_MEAN, DURATION_LOG_SD)))
        out.append(TraceJob(f"{condition}-{k}", round(t, 1), rng.choice(names), round(duration)))
    return out, gpus


def _suite_run(task: tuple) -> tuple[str, str, str, dict, float]:
    """One suite simulation; the row gains ``peak_rss_mb``, the process's peak resident
    memory (the task's own when each task runs in a fresh process, ``--isolate``)."""
    import resource

    condition, mps_model, name, catalog_path, model_path, cost = task
    cat = _catalog(catalog_path)
    trace, n_gpus = suite_trace(cat, condition)
    t0 = time.perf_counter()
    s = simulate(
        trace,
        cat,
        [gpu_model("a100-40gb")] * n_gpus,
        registry.get(name),
        predict=_predict(model_path),
        config=SimConfig(restart_costs=cost, mps_model=mps_model),
    )
    wall = time.perf_counter() - t0
    row = s.summary()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return condition, mps_model, name, row, wall


def suite(args, policies: list[str]) -> None:
    from miso_cli.planning.bound import trace_bound

    cat_path = args.data / "catalog.csv"
    cat = _catalog(cat_path)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    models = [m.strip() for m in args.mps_model.split(",") if m.strip()]
    cost = _cost(args.restart_cost.split(",")[0])
    tasks = [
        (c, m, p, cat_path, args.model, cost) for c in conditions for m in models for p in policies
    ]
    if args.workers > 1 or args.isolate:
        from concurrent.futures import ProcessPoolExecutor

        # --isolate: a fresh process per simulation, so its peak memory is its own.
        per_child = 1 if args.isolate else None
        with ProcessPoolExecutor(args.workers, max_tasks_per_child=per_child) as pool:
            results = []
            for res in pool.map(_suite_run, tasks):
                results.append(res)
                c, m, p, row, wall = res
                print(
                    f"  {c} {m} {p}: JCT {row['mean_jct_s']:.0f} s ({wall:.1f} s, "
                    f"peak {row['peak_rss_mb']:.0f} MB)",
                    flush=True,
                )
    else:
        results = []
        for t in tasks:
            results.append(_suite_run(t))
            c, m, p, row, wall = results[-1]
            print(f"  {c} {m} {p}: JCT {row['mean_jct_s']:.0f} s ({wall:.1f} s)", flush=True)
    rows = {(c, m, p): (row, wall) for c, m, p, row, wall in results}
    ratios: dict[tuple[str, str], list[float]] = {}
    for c in conditions:
        trace, n_gpus = suite_trace(cat, c)
        for m in models:
            bound = None
            if args.bound:
                bound = trace_bound(trace, cat, n_gpus, oversubscribed=True, mps_model=m)
            head = f"\n{c} ({len(trace)} jobs / {n_gpus} GPUs), MPS model {m}"
            if bound is not None:
                head += f", lower bound {bound.mean_jct_s:.0f} s"
            print(head)
            print(
                f"  {'policy':8s} {'JCT s':>7s} {'/best other':>11s} {'/bound':>7s} "
                f"{'restarts/job s':>14s} {'reconf':>6s} {'migr':>6s} {'wall s':>7s} "
                f"{'peak MB':>7s}"
            )
            jct = {p: rows[(c, m, p)][0]["mean_jct_s"] for p in policies}
            for p in policies:
                row, wall = rows[(c, m, p)]
                others = [jct[q] for q in policies if q != p and jct[q]]
                rel = jct[p] / min(others) if others else float("nan")
                vs_bound = jct[p] / bound.mean_jct_s if bound is not None else float("nan")
                restart = row["restart_overhead_s"] / max(1, row["jobs"])
                print(
                    f"  {p:8s} {jct[p]:7.0f} {rel:11.3f} {vs_bound:7.3f} "
                    f"{restart:14.1f} {row['reconfigurations']:6d} {row['migrations']:6d} "
                    f"{wall:7.1f} {row['peak_rss_mb']:7.0f}"
                )
            if "miso+" in policies:
                base = [q for q in ("nopart", "static", "mps", "oracle") if q in policies]
                if base:
                    ratios.setdefault((m, "best baseline"), []).append(
                        jct["miso+"] / min(jct[q] for q in base)
                    )
                if "oracle" in policies:
                    ratios.setdefault((m, "oracle"), []).append(jct["miso+"] / jct["oracle"])
                if bound is not None:
                    ratios.setdefault((m, "bound"), []).append(jct["miso+"] / bound.mean_jct_s)
    if ratios:
        print("\nmiso+ over all traces: geometric mean (worst)")
        for (m, ref), vals in ratios.items():
            geo = math.exp(statistics.mean(math.log(v) for v in vals))
            print(f"  {m:11s} miso+/{ref:13s} {geo:.3f} ({max(vals):.3f})")


def _run(task: tuple) -> tuple[str, str, int, str, dict, float]:
    """One simulation (a process-pool task)."""
    label, trace, cost, seed, name, catalog_path, model_path = task
    cat = _catalog(catalog_path)
    gpus = [gpu_model("a100-40gb")] * 8
    predict = _predict(model_path)
    t0 = time.perf_counter()
    s = simulate(
        trace,
        cat,
        gpus,
        registry.get(name),
        predict=predict,
        config=SimConfig(restart_costs=cost, seed=seed),
    )
    return label, str(cost), seed, name, s.summary(), time.perf_counter() - t0


_CACHE: dict[object, object] = {}


def _catalog(path: Path):
    if ("cat", path) not in _CACHE:
        _CACHE[("cat", path)] = load_catalog(path)
    return _CACHE[("cat", path)]


def _predict(model_path: Path | None):
    if ("pred", model_path) not in _CACHE:
        _CACHE[("pred", model_path)] = make_predict(model_path, gpu_model("a100-40gb"), None)[0]
    return _CACHE[("pred", model_path)]


def _cost(text: str) -> str | float:
    return text if text == "paper" else float(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "a100-40gb")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--restart-cost", default="30", help="30, paper, or a list: 30,paper")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--synthetic", type=int, default=0, help="also replay N synthetic traces")
    ap.add_argument("--synthetic-seeds", default="0", help="simulator seeds for synthetic traces")
    ap.add_argument("--loads", default="30,45,70", help="mean arrival gaps (s), taken in turn")
    ap.add_argument("--no-dev", action="store_true", help="skip the development trace")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--suite", action="store_true", help="the generated traces (see above)")
    ap.add_argument("--conditions", default=",".join(SUITE))
    ap.add_argument("--mps-model", default="optimistic", help="optimistic, pessimistic or both")
    ap.add_argument("--bound", action="store_true", help="also the lower bound on mean JCT")
    ap.add_argument(
        "--isolate", action="store_true", help="--suite: each simulation in a fresh process"
    )
    args = ap.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.suite:
        suite(args, policies)
        return
    cat_path = args.data / "catalog.csv"
    cat = _catalog(cat_path)
    _, meta = make_predict(args.model, gpu_model("a100-40gb"), None)
    print(f"predictor: {meta.get('source', meta.get('kind', '?'))} {meta.get('path', '')}")
    costs = [_cost(c.strip()) for c in args.restart_cost.split(",")]
    traces: list[tuple[str, list[TraceJob], list[int]]] = []
    if not args.no_dev:
        dev_seeds = [int(s) for s in args.seeds.split(",")]
        traces.append(("dev", load_trace(args.data / "trace_dev.csv", cat), dev_seeds))
    loads = [float(x) for x in args.loads.split(",")]
    syn_seeds = [int(s) for s in args.synthetic_seeds.split(",")]
    for i in range(args.synthetic):
        gap = loads[i % len(loads)]
        traces.append((f"syn{i}-gap{gap:g}", synthetic_trace(cat, i, gap), syn_seeds))
    tasks = [
        (label, trace, cost, seed, name, cat_path, args.model)
        for label, trace, seeds in traces
        for cost in costs
        for seed in seeds
        for name in policies
    ]
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_run, tasks))
    else:
        results = [_run(t) for t in tasks]
    rows: dict[tuple[str, str, int, str], dict] = {}
    walls: dict[str, list[float]] = {p: [] for p in policies}
    for label, cost, seed, name, row, wall in results:
        rows[(label, cost, seed, name)] = row
        walls[name].append(wall)

    detailed = len(traces) == 1 and len(costs) == 1
    for label, _trace, seeds in traces:
        for cost in map(str, costs):
            if detailed:
                for seed in seeds:
                    _seed_table(label, cost, seed, policies, rows)
    print(
        "\nwall seconds per simulation (mean): "
        + ", ".join(f"{p} {statistics.mean(w):.2f}" for p, w in walls.items() if w)
    )
    if detailed:
        label, _t, seeds = traces[0]
        _paper_summary(label, str(costs[0]), seeds, policies, rows)
    _ratio_table(traces, [str(c) for c in costs], policies, rows)


def _mean(rows, label, cost, seeds, name, key) -> float:
    return statistics.mean(rows[(label, cost, s, name)][key] for s in seeds)


def _seed_table(label, cost, seed, policies, rows) -> None:
    print(f"\n{label} seed {seed}: 8 x a100-40gb, restart cost {cost}")
    print(
        f"{'policy':8s} {'JCT s':>7s} {'p95 s':>7s} {'queue s':>8s} {'makespan':>9s} "
        f"{'reconf':>6s} {'migr':>5s} {'util':>5s}"
    )
    for name in policies:
        row = rows[(label, cost, seed, name)]
        print(
            f"{name:8s} {row['mean_jct_s']:7.0f} {row['p95_jct_s']:7.0f} "
            f"{row['mean_queue_s']:8.0f} {row['makespan_s']:9.0f} "
            f"{row['reconfigurations']:6d} {row['migrations']:5d} "
            f"{row['slice_utilisation']:5.0%}"
        )


def _paper_summary(label, cost, seeds, policies, rows) -> None:
    mean = {p: _mean(rows, label, cost, seeds, p, "mean_jct_s") for p in policies}
    span = {p: _mean(rows, label, cost, seeds, p, "makespan_s") for p in policies}
    print("\nmean over seeds (ratio of mean JCT to nopart / static / oracle; makespan):")
    for p in policies:
        parts = [f"{p:8s} JCT {mean[p]:7.0f}"]
        for ref in ("nopart", "static", "oracle"):
            if ref in mean:
                parts.append(f"vs {ref} {mean[p] / mean[ref]:.2f}")
        parts.append(f"makespan {span[p]:7.0f}")
        print("  ".join(parts))
    print("paper (MISO): JCT 0.51 of nopart, 0.84 of best static, <= 1.10 of oracle")


def _ratio_table(traces, costs, policies, rows) -> None:
    if "miso+" not in policies:
        return
    refs = [r for r in ("oracle", "miso") if r in policies]
    if not refs:
        return
    print("\nper trace (mean over seeds): mean JCT and makespan, miso+ against " + ", ".join(refs))
    head = f"{'trace':16s} {'cost':>5s} {'JCT':>6s} {'span':>6s}"
    for r in refs:
        head += f" {'JCT/' + r:>11s} {'span/' + r:>12s}"
    head += f" {'reconf':>6s} {'migr':>5s}"
    print(head)
    ratios: dict[tuple[str, str], list[float]] = {}
    for label, _trace, seeds in traces:
        for cost in costs:
            jct = _mean(rows, label, cost, seeds, "miso+", "mean_jct_s")
            span = _mean(rows, label, cost, seeds, "miso+", "makespan_s")
            line = f"{label:16s} {cost:>5s} {jct:6.0f} {span:6.0f}"
            for r in refs:
                rj = jct / _mean(rows, label, cost, seeds, r, "mean_jct_s")
                rs = span / _mean(rows, label, cost, seeds, r, "makespan_s")
                ratios.setdefault((r, "jct"), []).append(rj)
                ratios.setdefault((r, "span"), []).append(rs)
                line += f" {rj:11.3f} {rs:12.3f}"
            line += f" {_mean(rows, label, cost, seeds, 'miso+', 'reconfigurations'):6.0f}"
            line += f" {_mean(rows, label, cost, seeds, 'miso+', 'migrations'):5.0f}"
            print(line)
    print("aggregate over traces: geometric mean (worst)")
    for (r, what), vals in ratios.items():
        geo = math.exp(statistics.mean(math.log(v) for v in vals))
        print(f"  miso+/{r:6s} {what:4s} {geo:.3f} ({max(vals):.3f})")


if __name__ == "__main__":
    main()
