"""Predictor accuracy on unseen workload families, and its speed.

Leave-one-family-out on ``../shared/data/a100-40gb/mps_mig_pairs.csv``: for each
family, fit on the others and predict the held-out family's 4g/3g step-time
ratios. Prints the mean absolute percentage error (MAPE) per target slice and per
held-out family for

* ``training-mean``: the first baseline, the mean ratio of the training families;
* ``gbr-own``: the second baseline, gradient boosting on the job's own level ratios;
* each candidate of ``miso fit`` on the full features (profile, jobs in mix, co-runners);
* ``miso-fit``: what ``miso fit`` does, honestly scored: the estimator is chosen by
  an inner grouped CV on the training families only (nested), then scored on the
  held-out family.

Then the 2g/1g predictions (physical model, fed by a model fitted without the
held-out family) against the catalog's measurements, and the call costs of
``predict_one``/``predict_many`` and of ``miso fit``.

    python benchmarks/predictor.py            # everything (a few minutes on 2 cores)
    python benchmarks/predictor.py --quick    # skip the nested selection
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "a100-40gb"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the nested selection")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    pairs_path, catalog_path = args.data / "mps_mig_pairs.csv", args.data / "catalog.csv"
    if not pairs_path.exists():
        print(f"no data at {pairs_path}: this benchmark needs ../shared/data", file=sys.stderr)
        return 2

    import numpy as np

    from miso_cli.predict.data import read_many
    from miso_cli.predict.estimators import (
        CANDIDATES,
        SliceRatioModel,
        ape,
        cross_val_predictions,
        cv_splits,
        make_regressor,
    )
    from miso_cli.predict.features import usable_profile
    from miso_cli.predict.predictor import SlicePredictor

    rows = read_many([pairs_path], require_mig_7g=True)
    catalog = read_many([catalog_path], require_mig_7g=True)
    from miso_cli.predict.features import FeatureSpec

    spec = FeatureSpec.from_rows(rows)
    X = spec.matrix(rows)
    # The second baseline sees the job's own level ratios only (no products with the mix).
    own_cols = [f"own_r{p}" for p in spec.levels]
    own_cols = [spec.names.index(n) for n in own_cols]
    groups = [r.family for r in rows]
    fams = sorted(set(groups))
    g_arr = np.asarray(groups)
    _, splits = cv_splits(groups)
    print(f"{len(rows)} rows, {len({r.workload for r in rows})} workloads, families {fams}")
    print(f"features: {', '.join(spec.names)}\n")

    results: dict[str, dict[int, np.ndarray]] = {}
    for g in (4, 3):
        y = np.log([r.ratio(g) for r in rows])
        out: dict[str, np.ndarray] = {}
        mean_pred = np.empty(len(y))
        for train, test in splits:
            mean_pred[test] = np.log(np.mean(np.exp(y[train])))
        out["training-mean"] = mean_pred
        out["gbr-own"] = cross_val_predictions(X[:, own_cols], y, splits, ["gbr"], 0)["gbr"]
        t0 = time.perf_counter()
        cand = cross_val_predictions(X, y, splits, CANDIDATES, 0)
        out.update(cand)
        if not args.quick:
            nested = np.empty(len(y))
            chosen = []
            for train, test in splits:
                _, inner = cv_splits(g_arr[train].tolist())
                inner_pred = cross_val_predictions(X[train], y[train], inner, CANDIDATES, 0)
                scores = {n: float(np.mean(ape(p, y[train]))) for n, p in inner_pred.items()}
                best = min(scores, key=scores.__getitem__)
                chosen.append(best)
                est = make_regressor(best, len(train), 0).fit(X[train], y[train])
                nested[test] = est.predict(X[test])
            out["miso-fit"] = nested
            print(
                f"{g}g: nested choice per held-out family: {dict(zip(fams, chosen, strict=True))}"
            )
        print(f"{g}g: cross-validation took {time.perf_counter() - t0:.0f} s")
        for name, p in out.items():
            results.setdefault(name, {})[g] = ape(p, y)

    print("\nMAPE on unseen families (leave-one-family-out), per target slice and held-out family")
    header = f"{'method':15s} {'4g':>6s} {'3g':>6s} {'4g/3g':>6s} | " + " ".join(
        f"{f:>10s}" for f in fams
    )
    print(header)
    print("-" * len(header))
    for name, errs in results.items():
        both = (errs[4] + errs[3]) / 2
        per = " ".join(f"{np.mean(both[g_arr == f]):10.1%}" for f in fams)
        print(
            f"{name:15s} {np.mean(errs[4]):6.1%} {np.mean(errs[3]):6.1%} "
            f"{np.mean(both):6.1%} | {per}"
        )
    print("(per-family columns: mean of the 4g and 3g errors; rows weigh as in the data)")

    # 2g/1g: physical model on the ratios predicted by a model that never saw the family.
    print("\n2g/1g from the physical model, fitted without the family, vs catalog measurements")
    errs21: dict[int, list[float]] = {2: [], 1: []}
    errs43: dict[int, list[float]] = {4: [], 3: []}
    for fam in fams:
        train_rows = [r for r in rows if r.family != fam]
        model = SliceRatioModel(estimators=("ridge",)).fit(
            train_rows, choices={4: "ridge", 3: "ridge"}
        )
        pred = SlicePredictor(model, source="model", gpu_model_key="a100-40gb")
        for r in catalog:
            if r.family != fam or not usable_profile(r.mps):
                continue
            p = pred.predict_one(r.mps, jobs_in_mix=1)
            for g, bucket in ((2, errs21[2]), (1, errs21[1]), (4, errs43[4]), (3, errs43[3])):
                truth = r.ratio(g)
                if truth is not None and g in p.relative:
                    bucket.append(abs(p.relative[g] / truth - 1))
    for g, e in {**errs43, **errs21}.items():
        print(f"  {g}g: MAPE {np.mean(e):.1%} over {len(e)} solo catalog workloads")

    # Speed.
    from miso_cli.predict import load_predictor

    prior = load_predictor(None, "a100-40gb", Path("/nonexistent-miso-state"))
    profiles = [r.mps for r in rows[:2000]]
    t0 = time.perf_counter()
    for mps in profiles:
        prior.predict_one(mps, jobs_in_mix=3)
    cold = (time.perf_counter() - t0) / len(profiles)
    t0 = time.perf_counter()
    for _ in range(5):
        for mps in profiles:
            prior.predict_one(mps, jobs_in_mix=3)
    warm = (time.perf_counter() - t0) / (5 * len(profiles))
    print(f"\nprior predict_one: {cold * 1e6:.0f} us uncached, {warm * 1e6:.1f} us cached")
    t0 = time.perf_counter()
    model = SliceRatioModel().fit(rows)
    fit_s = time.perf_counter() - t0
    fitted = SlicePredictor(model, source="model", gpu_model_key="a100-40gb")
    print(
        f"fit with model selection ({len(rows)} rows, {', '.join(CANDIDATES)}): {fit_s:.1f} s; "
        f"chosen {model.chosen_}"
    )
    t0 = time.perf_counter()
    for mps in profiles[:500]:
        fitted.predict_one(mps, jobs_in_mix=3)
    one = (time.perf_counter() - t0) / 500
    t0 = time.perf_counter()
    fitted.predict_many([{"mps": m, "jobs_in_mix": 3} for m in profiles])
    many = (time.perf_counter() - t0) / len(profiles)
    print(f"fitted predict_one: {one * 1e6:.0f} us uncached; predict_many: {many * 1e6:.0f} us/job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
