"""Mean JCT, makespan and the rest for every policy on the development trace.

    python benchmarks/simulate.py [--model MODEL.joblib] [--seeds 0,1,2] [--restart-cost 30]

Reads ``../shared/data/a100-40gb/{trace_dev,catalog}.csv``. ``miso`` and ``miso+``
see predictions from the fitted model given with ``--model`` (else the state
dir's, else the shipped prior). Prints one table per seed and the mean over
seeds, with the paper's reference figures (MISO: mean JCT 49% below nopart, 16%
below the best static partition, within 10% of oracle).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from miso_cli.catalog import load_catalog  # noqa: E402
from miso_cli.gpu.profiles import model as gpu_model  # noqa: E402
from miso_cli.policy import registry  # noqa: E402
from miso_cli.simulator import SimConfig, load_trace, make_predict, simulate  # noqa: E402

POLICIES = ("nopart", "static", "mps", "miso", "oracle", "miso+")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "a100-40gb")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--restart-cost", default="30")
    args = ap.parse_args()
    cat = load_catalog(args.data / "catalog.csv")
    trace = load_trace(args.data / "trace_dev.csv", cat)
    gpus = [gpu_model("a100-40gb")] * 8
    predict, meta = make_predict(args.model, gpus[0], None)
    print(f"predictor: {meta.get('source', meta.get('kind', '?'))} {meta.get('path', '')}")
    costs: str | float = (
        args.restart_cost if args.restart_cost == "paper" else float(args.restart_cost)
    )
    per: dict[str, list[dict]] = {p: [] for p in POLICIES}
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = SimConfig(restart_costs=costs, seed=seed)
        print(f"\nseed {seed}: {len(trace)} jobs on 8 x a100-40gb, restart cost {costs}")
        print(
            f"{'policy':8s} {'JCT s':>7s} {'p95 s':>7s} {'queue s':>8s} {'makespan':>9s} "
            f"{'reconf':>6s} {'migr':>5s} {'util':>5s} {'wall s':>7s}"
        )
        for name in POLICIES:
            t0 = time.perf_counter()
            s = simulate(trace, cat, gpus, registry.get(name), predict=predict, config=config)
            row = s.summary()
            wall = time.perf_counter() - t0
            per[name].append(row)
            print(
                f"{name:8s} {row['mean_jct_s']:7.0f} {row['p95_jct_s']:7.0f} "
                f"{row['mean_queue_s']:8.0f} {row['makespan_s']:9.0f} "
                f"{row['reconfigurations']:6d} {row['migrations']:5d} "
                f"{row['slice_utilisation']:5.0%} {wall:7.2f}"
            )
    mean = {p: statistics.mean(r["mean_jct_s"] for r in rows) for p, rows in per.items()}
    span = {p: statistics.mean(r["makespan_s"] for r in rows) for p, rows in per.items()}
    print("\nmean over seeds (ratio of mean JCT to nopart / static / oracle; makespan):")
    for p in POLICIES:
        print(
            f"{p:8s} JCT {mean[p]:7.0f}  vs nopart {mean[p] / mean['nopart']:.2f}  "
            f"vs static {mean[p] / mean['static']:.2f}  vs oracle {mean[p] / mean['oracle']:.2f}"
            f"  makespan {span[p]:7.0f}"
        )
    print("paper (MISO): JCT 0.51 of nopart, 0.84 of best static, <= 1.10 of oracle")


if __name__ == "__main__":
    main()
