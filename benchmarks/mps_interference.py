"""Evidence for the simulated GPU's MPS interference model (miso_cli/gpu/sim/simmps.py).

Reads ../shared/data/a100-40gb/{catalog,mps_mig_pairs}.csv. For every job of
every measured mix, the change of its level ratios (mps_100/mps_14 and
mps_50/mps_14) from the job alone (catalog) to the mix is what co-location did
to it; the model predicts that change. Prints the fitted exponent, the error
with no interference, with the model as shipped, and the floor any predictor
that knows only (workload, n jobs) could reach, overall and per n.

    python benchmarks/mps_interference.py [DATA_DIR]
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from miso_cli.gpu.sim import simmps
from miso_cli.spec.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent


def observations(data: Path) -> list[tuple[str, int, float, float, float]]:
    """(workload, n, level, observed log ratio change) per job and level."""
    cat = load_catalog(data / "catalog.csv")
    mixes: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(data / "mps_mig_pairs.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            mixes[row["mix"]].append(row)
    out = []
    for rows in mixes.values():
        for row in rows:
            # jobs_in_mix, not the rows present: repeated workloads share one row, and
            # rows of workload families kept out of this data set are missing
            n = int(row["jobs_in_mix"])
            w = cat[row["workload"]]
            t14 = float(row["mps_14"])
            for level in (100, 50):
                seen = math.log(float(row[f"mps_{level}"]) / t14)
                alone = math.log(w.mps_step_time_ms(level) / w.mps_step_time_ms(14))
                out.append((w.name, n, level, seen - alone))
    return out


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "a100-40gb"
    obs = observations(data)
    y = np.array([o[3] for o in obs])
    ns = np.array([o[1] for o in obs])
    levels = np.array([o[2] for o in obs])

    def predicted(alpha: float) -> np.ndarray:
        """log(S at the level / S at 14 %) with S = 1 + alpha * oversubscription."""

        def s(level: np.ndarray | int) -> np.ndarray:
            return 1 + alpha * np.maximum(0, level * ns - 100) / 100

        return np.log(s(levels) / s(14))

    fit = minimize_scalar(
        lambda a: float(np.mean((predicted(a) - y) ** 2)), bounds=(0, 5), method="bounded"
    )
    floor = np.empty_like(y)
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for i, o in enumerate(obs):
        groups[(o[0], o[1], o[2])].append(i)
    for idx in groups.values():
        floor[idx] = y[idx] - np.median(y[idx])

    def err(e: np.ndarray) -> str:
        return f"MAE {np.mean(np.abs(e)):.3f}  RMSE {np.sqrt(np.mean(e**2)):.3f}"

    shipped = simmps.INTERFERENCE
    x = predicted(shipped)
    print(f"{len(obs)} job-level observations from {data}")
    print(f"fitted INTERFERENCE: {fit.x:.3f}   shipped: {shipped}")
    print("error in log(level ratio change):")
    print(f"  no interference      {err(y)}")
    print(f"  model (shipped)      {err(x - y)}")
    print(f"  floor (per workload, n median) {err(floor)}")
    print("per jobs in mix:   n   obs   none-MAE  model-MAE  floor-MAE  mean-observed  mean-model")
    for n in range(1, 8):
        m = ns == n
        if not m.any():
            continue
        print(
            f"                  {n:2d} {int(m.sum()):5d}   {np.mean(np.abs(y[m])):.3f}     "
            f"{np.mean(np.abs(x[m] - y[m])):.3f}      {np.mean(np.abs(floor[m])):.3f}"
            f"      {np.mean(y[m]):+.3f}         {np.mean(x[m]):+.3f}"
        )


if __name__ == "__main__":
    main()
