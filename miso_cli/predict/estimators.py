"""The learned part: one regressor per MIG slice size, chosen by cross-validation grouped by family.

Each target is ``log(step time on g slices / step time on the whole GPU)``. The
candidates are scikit-learn regressors over :mod:`miso_cli.predict.features`:

* ``ridge``: standardised linear model, regularisation chosen by its own CV; it
  extrapolates smoothly to jobs more sensitive than any seen in training;
* ``gbr``: gradient-boosted trees; captures the interactions between a job's
  profile and its co-runners, but cannot extrapolate past the training range;
* ``forest``: extremely randomised trees, large leaves, for a smoother tree model;
* ``blend``: the mean of ``ridge`` and ``gbr`` in log space, which often beats
  both on families neither has seen.

The candidate with the lowest mean absolute percentage error over held-out
families (leave-one-family-out, or 5 grouped folds past 8 families) is refitted
on everything. The error of that CV becomes the prediction's uncertainty.

A slice size is learned only from rows that look like the profiles it will be
asked about. When the training data holds co-located profiles (``jobs_in_mix``
above 1) but a slice size was measured only beside solo profiles (the catalog's
2g/1g next to the MISO pairs), its regressor would only have seen uncontended
profiles; a profile taken in a mix is flattened by contention (its 100 % level
is already slow), and such a regressor reads it as a job that barely slows
down: in the simulator it under-predicted 2g/1g step times by 27 % on average,
by half in mixes of four. Those slice sizes are left to the physical model, fed
by the slice sizes learned across mix sizes, and listed in ``not_learned_``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from miso_cli.predict.data import ProfileRow
from miso_cli.predict.features import FeatureSpec, usable_profile

if TYPE_CHECKING:
    import numpy as np

CANDIDATES: tuple[str, ...] = ("ridge", "gbr", "forest", "blend")
BLEND_MEMBERS = ("ridge", "gbr")
FULL_SLICES = 7


def make_regressor(name: str, n_rows: int, random_state: int) -> Any:
    """A fresh, unfitted candidate regressor."""
    import numpy as np
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        GradientBoostingRegressor,
        VotingRegressor,
    )
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    leaf = max(1, min(20, n_rows // 50))  # large leaves on big data, usable on small
    if name == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if name == "gbr":
        return GradientBoostingRegressor(
            n_estimators=150,
            max_depth=3,
            learning_rate=0.05,
            subsample=0.8,
            min_samples_leaf=leaf,
            random_state=random_state,
        )
    if name == "forest":
        return ExtraTreesRegressor(
            n_estimators=100,
            min_samples_leaf=leaf,
            max_features=0.5,
            random_state=random_state,
            n_jobs=1,
        )
    if name == "blend":
        return VotingRegressor(
            [(m, make_regressor(m, n_rows, random_state)) for m in BLEND_MEMBERS]
        )
    raise ValueError(f"unknown estimator {name!r} (known: {', '.join(CANDIDATES)})")


def cv_splits(groups: Sequence[str]) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Train/test index pairs holding out whole groups; and how the split was made."""
    import numpy as np

    g = np.asarray(groups)
    uniq = sorted(set(g.tolist()))
    if len(uniq) < 2:
        return "none", []
    if len(uniq) <= 8:
        kind = "leave-one-family-out"
        folds = [[u] for u in uniq]
    else:
        kind = "5-fold grouped by family"
        folds = [uniq[i::5] for i in range(5)]
    out = []
    for held in folds:
        test = np.isin(g, held)
        out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return kind, out


def ape(pred_log: np.ndarray, true_log: np.ndarray) -> np.ndarray:
    """Absolute percentage error of the ratios, from log ratios."""
    import numpy as np

    return np.abs(np.exp(pred_log - true_log) - 1.0)


def cross_val_predictions(
    X: np.ndarray,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    names: Sequence[str],
    random_state: int,
) -> dict[str, np.ndarray]:
    """Out-of-fold log-ratio predictions of each candidate (NaN where never held out)."""
    import numpy as np

    base = [n for n in names if n != "blend"]
    if "blend" in names:
        base += [m for m in BLEND_MEMBERS if m not in base]
    out = {n: np.full(len(y), np.nan) for n in base}
    for train, test in splits:
        for n in base:
            est = make_regressor(n, len(train), random_state).fit(X[train], y[train])
            out[n][test] = est.predict(X[test])
    if "blend" in names:
        out["blend"] = np.mean([out[m] for m in BLEND_MEMBERS], axis=0)
    return {n: out[n] for n in names}


class SliceRatioModel:
    """Predicts log step-time ratios (g slices / whole GPU) from MPS profiles.

    scikit-learn conventions: ``__init__`` only stores parameters, ``fit`` returns
    ``self``, learned attributes end in ``_``.
    """

    def __init__(
        self,
        estimators: Sequence[str] = CANDIDATES,
        random_state: int = 0,
        min_target_rows: int = 10,
        min_target_families: int = 2,
    ) -> None:
        self.estimators = tuple(estimators)
        self.random_state = random_state
        self.min_target_rows = min_target_rows
        self.min_target_families = min_target_families

    def get_params(self) -> dict[str, Any]:
        return {
            "estimators": list(self.estimators),
            "random_state": self.random_state,
            "min_target_rows": self.min_target_rows,
            "min_target_families": self.min_target_families,
        }

    def fit(
        self,
        rows: Sequence[ProfileRow],
        *,
        choices: dict[int, str] | None = None,
        only: Collection[int] | None = None,
    ) -> SliceRatioModel:
        """Fit one regressor per slice size the rows measured often enough.

        ``choices`` (slice size -> estimator name) skips the cross-validation and
        fits those estimators: used to refit a saved model whose choice is made.
        ``only``: learn exactly these slice sizes wherever two rows or more measured
        them, whatever the minimums (a fold refit of a model whose slices are chosen).
        """
        import numpy as np

        for name in self.estimators:
            if name not in CANDIDATES:
                raise ValueError(f"unknown estimator {name!r} (known: {', '.join(CANDIDATES)})")
        usable = [r for r in rows if 7 in r.mig and usable_profile(r.mps)]
        if not usable:
            raise ValueError(
                "no row has both an MPS profile (mps_100 and a lower level) and mig_7g"
            )
        self.spec_ = FeatureSpec.from_rows(usable or rows)
        self.targets_: dict[int, Any] = {}
        self.chosen_: dict[int, str] = {}
        self.sigma_: dict[int, float] = {}
        self.fallback_: dict[int, float] = {}
        self.fallback_sigma_: dict[int, float] = {}
        self.cv_: dict[int, dict[str, Any]] = {}
        self.not_learned_: dict[int, str] = {}
        mixed = any(r.jobs_in_mix > 1 for r in usable)
        slices = sorted({g for r in usable for g in r.mig if g != FULL_SLICES}, reverse=True)
        for g in slices:
            sub = [r for r in usable if r.ratio(g) is not None]
            fams = {r.family for r in sub}
            if only is not None:
                if g not in only or len(sub) < 2:
                    self.not_learned_[g] = "not asked for" if g not in only else "under 2 rows"
                    continue
            elif len(sub) < self.min_target_rows or len(fams) < self.min_target_families:
                self.not_learned_[g] = (
                    f"{len(sub)} rows from {len(fams)} families (need {self.min_target_rows} "
                    f"rows, {self.min_target_families} families)"
                )
                continue  # too little to learn from: the physical model covers this slice
            if only is None and mixed and not any(r.jobs_in_mix > 1 for r in sub):
                self.not_learned_[g] = (
                    f"measured only beside solo profiles ({len(sub)} rows); the model is "
                    "asked about profiles taken in mixes"
                )
                continue  # see the module docstring: the physical model covers this slice
            X = self.spec_.matrix(sub)
            y = np.log(np.array([r.ratio(g) for r in sub], dtype=float))
            groups = [r.family for r in sub]
            report: dict[str, Any] = {"rows": len(sub), "families": len(fams)}
            choice = (choices or {}).get(g, self.estimators[0])
            sigma = float(np.std(y)) if len(y) > 1 else 0.25
            if choices is None:
                kind, splits = cv_splits(groups)
                report["cv"] = kind
                if splits:
                    preds = cross_val_predictions(X, y, splits, self.estimators, self.random_state)
                    mean_pred = _training_mean_predictions(y, splits)
                    scores: dict[str, float] = {}
                    for name, p in preds.items():
                        scores[name] = float(np.nanmean(ape(p, y)))
                    choice = min(scores, key=lambda n: (scores[n], self.estimators.index(n)))
                    resid = preds[choice] - y
                    sigma = float(np.sqrt(np.nanmean(resid**2)))
                    report["mape"] = {n: round(s, 5) for n, s in scores.items()}
                    report["baseline_training_mean_mape"] = round(
                        float(np.nanmean(ape(mean_pred, y))), 5
                    )
                    report["per_family_mape"] = _per_family(ape(preds[choice], y), groups)
            else:
                report["cv"] = "skipped (refit of a saved choice)"
            est = make_regressor(choice, len(sub), self.random_state).fit(X, y)
            self.targets_[g] = est
            self.chosen_[g] = choice
            self.sigma_[g] = max(sigma, 0.01)
            self.fallback_[g] = float(np.mean(y))
            self.fallback_sigma_[g] = max(float(np.std(y)), 0.05)
            report["estimator"] = choice
            report["sigma_log"] = round(self.sigma_[g], 5)
            self.cv_[g] = report
        self.n_rows_ = len(usable)
        return self

    def predict_log(self, X: np.ndarray) -> dict[int, np.ndarray]:
        """Log ratios per learned slice size for the rows of ``X``."""
        return {g: predict_fast(est, X) for g, est in self.targets_.items()}


def predict_fast(est: Any, X: np.ndarray) -> np.ndarray:
    """``est.predict(X)`` without the per-call overhead that dominates on a few rows.

    A forest's ``predict`` dispatches its trees through joblib (milliseconds per
    call even with one job); the trees themselves take microseconds. Same result.
    """
    import numpy as np
    from sklearn.ensemble import ExtraTreesRegressor, VotingRegressor

    if len(X) > 64:
        return est.predict(X)
    if isinstance(est, ExtraTreesRegressor):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        out = np.zeros(len(X))
        for tree in est.estimators_:
            out += tree.predict(X32, check_input=False)
        return out / len(est.estimators_)
    if isinstance(est, VotingRegressor):
        return np.mean([predict_fast(e, X) for e in est.estimators_], axis=0)
    return est.predict(X)


def _training_mean_predictions(
    y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """The first baseline: predict the mean ratio of the training folds."""
    import numpy as np

    out = np.full(len(y), np.nan)
    for train, test in splits:
        out[test] = math.log(float(np.mean(np.exp(y[train]))))
    return out


def _per_family(errors: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    import numpy as np

    g = np.asarray(groups)
    return {f: round(float(np.nanmean(errors[g == f])), 5) for f in sorted(set(g.tolist()))}
