"""The shipped prior: what miso predicts before this machine has any calibration data.

A prior is a reviewable JSON file in ``predictors/`` (installed with the package
as ``miso_cli/predict/priors/``): per MIG slice size, the intercept and
coefficients of a linear model over the named features of
:mod:`miso_cli.predict.features`, predicting ``log(t_g / t_7g)``, with the
cross-validated error it was measured to have, the data it came from, and the
error of the physical model used for the slices the data lacks. Nothing in it
is executable: loading it is parsing numbers.

Regenerate it from the measurements with::

    python -m miso_cli.predict.make_prior --pairs ../shared/data/a100-40gb/mps_mig_pairs.csv \\
        --catalog ../shared/data/a100-40gb/catalog.csv --out predictors/a100-40gb.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput
from miso_cli.predict.data import ProfileRow, summarize
from miso_cli.predict.features import FeatureSpec, usable_profile
from miso_cli.predict.physical import Shares, decompose, ratio_on

PRIOR_FORMAT = "miso-linear-prior/1"
DEFAULT_PRIOR_GPU = "a100-40gb"
# Used when neither the prior nor a model has a better figure (log-space std. dev.).
DEFAULT_PHYSICAL_SIGMA = {2: 0.10, 1: 0.25}


def priors_dir() -> Path:
    """Where the shipped priors are: the package data (a link to ``predictors/`` in a checkout)."""
    return Path(str(resources.files("miso_cli.predict") / "priors"))


@dataclass
class LinearPrior:
    """A linear model per slice size, in log space, read from a prior file."""

    gpu_model_key: str
    spec: FeatureSpec
    intercept: dict[int, float]
    coef: dict[int, list[float]]
    sigma: dict[int, float]
    fallback: dict[int, float]
    fallback_sigma: dict[int, float]
    physical_sigma: dict[int, float]
    path: Path | None
    document: dict[str, Any]

    def predict_log_one(self, x: Sequence[float]) -> dict[int, float]:
        """Pure Python: a dot product per slice size (no numpy call overhead)."""
        return {
            g: self.intercept[g] + sum(c * v for c, v in zip(w, x, strict=True))
            for g, w in self.coef.items()
        }

    def predict_log(self, X: Any) -> dict[int, Any]:
        import numpy as np

        X = np.asarray(X, dtype=float)
        return {g: X @ np.asarray(w) + self.intercept[g] for g, w in self.coef.items()}


def parse_prior(doc: dict[str, Any], path: Path | None = None) -> LinearPrior:
    """Validate and read a prior document; a malformed one is :class:`BadInput`."""
    where = str(path) if path else "prior"
    try:
        if doc.get("format") != PRIOR_FORMAT:
            raise BadInput(f"{where}: format is {doc.get('format')!r}, expected {PRIOR_FORMAT!r}")
        spec = FeatureSpec(
            doc["features"]["levels"],
            interactions=bool(doc["features"].get("interactions", False)),
        )
        names = spec.names
        if list(doc["features"]["names"]) != names:
            raise BadInput(f"{where}: feature names do not match levels {list(spec.levels)}")
        intercept: dict[int, float] = {}
        coef: dict[int, list[float]] = {}
        sigma: dict[int, float] = {}
        fallback: dict[int, float] = {}
        fallback_sigma: dict[int, float] = {}
        for key, t in doc["targets"].items():
            g = int(key.removeprefix("mig_").removesuffix("g"))
            intercept[g] = float(t["intercept"])
            coef[g] = [float(t["coef"][n]) for n in names]
            sigma[g] = float(t["sigma_log"])
            fallback[g] = float(t["mean_log_ratio"])
            fallback_sigma[g] = float(t["std_log_ratio"])
        physical = {
            int(k.removeprefix("mig_").removesuffix("g")): float(v)
            for k, v in doc.get("physical", {}).get("sigma_log", {}).items()
        }
        values = [*intercept.values(), *sigma.values(), *(c for w in coef.values() for c in w)]
        if not all(math.isfinite(v) for v in values):
            raise BadInput(f"{where}: non-finite coefficient")
        return LinearPrior(
            gpu_model_key=str(doc["gpu_model"]),
            spec=spec,
            intercept=intercept,
            coef=coef,
            sigma=sigma,
            fallback=fallback,
            fallback_sigma=fallback_sigma,
            physical_sigma=physical or dict(DEFAULT_PHYSICAL_SIGMA),
            path=path,
            document=doc,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"{where}: malformed prior ({type(exc).__name__}: {exc})") from None


def load_prior(gpu_model_key: str = DEFAULT_PRIOR_GPU, path: Path | None = None) -> LinearPrior:
    """The shipped prior for ``gpu_model_key``, else the A100-40GB one (transferred physically)."""
    if path is None:
        base = priors_dir()
        path = base / f"{gpu_model_key}.json"
        if not path.exists():
            path = base / f"{DEFAULT_PRIOR_GPU}.json"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(
            f"{path}: shipped prior not found", hint="reinstall miso, or fit a model: miso fit"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: cannot read prior: {exc}") from None
    return parse_prior(doc, Path(path))


def physical_check(
    catalog_rows: Sequence[ProfileRow], shares: Shares
) -> dict[int, dict[str, float]]:
    """Error of the physical model on rows measured on every slice: 4g/3g in, smaller out."""
    errs: dict[int, list[float]] = {}
    for r in catalog_rows:
        ratios = {g: r.ratio(g) for g in (4, 3)}
        if any(v is None for v in ratios.values()):
            continue
        c, m = decompose({g: v for g, v in ratios.items() if v is not None}, shares)
        for g in (2, 1):
            truth = r.ratio(g)
            if truth is not None:
                errs.setdefault(g, []).append(math.log(ratio_on(g, c, m, shares) / truth))
    return {
        g: {
            "rows": len(e),
            "mape": round(sum(abs(math.exp(x) - 1) for x in e) / len(e), 4),
            "rmse_log": round(math.sqrt(sum(x * x for x in e) / len(e)), 4),
        }
        for g, e in sorted(errs.items(), reverse=True)
    }


def build_prior(
    pairs: Sequence[ProfileRow],
    catalog: Sequence[ProfileRow],
    *,
    gpu_model_key: str = DEFAULT_PRIOR_GPU,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the linear prior (ridge, alpha by CV) and document it, with grouped-CV errors."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from miso_cli.gpu.profiles import model as gpu_model
    from miso_cli.predict.estimators import ape, cv_splits

    pairs = [r for r in pairs if usable_profile(r.mps)]
    spec = FeatureSpec.from_rows(pairs)
    targets: dict[str, Any] = {}
    for g in (4, 3):
        sub = [r for r in pairs if r.ratio(g) is not None]
        X = spec.matrix(sub)
        y = np.log(np.array([r.ratio(g) for r in sub], dtype=float))
        groups = [r.family for r in sub]
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd[sd == 0] = 1.0

        def fit(Xt: Any, yt: Any, mu: Any = mu, sd: Any = sd) -> RidgeCV:
            return RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((Xt - mu) / sd, yt)

        kind, splits = cv_splits(groups)
        oof = np.full(len(y), np.nan)
        for train, test in splits:
            oof[test] = fit(X[train], y[train]).predict((X[test] - mu) / sd)
        errors = ape(oof, y)
        g_arr = np.asarray(groups)
        est = fit(X, y)
        coef = est.coef_ / sd
        intercept = float(est.intercept_ - np.sum(est.coef_ * mu / sd))
        targets[f"mig_{g}g"] = {
            "intercept": round(intercept, 6),
            "coef": {n: round(float(c), 6) for n, c in zip(spec.names, coef, strict=True)},
            "alpha": float(est.alpha_),
            "sigma_log": round(float(np.sqrt(np.mean((oof - y) ** 2))), 5),
            "mean_log_ratio": round(float(np.mean(y)), 5),
            "std_log_ratio": round(float(np.std(y)), 5),
            "cv": kind,
            "cv_mape": round(float(np.mean(errors)), 4),
            "cv_mape_per_family": {
                f: round(float(np.mean(errors[g_arr == f])), 4) for f in sorted(set(groups))
            },
            "rows": len(sub),
        }
    shares = Shares.of(gpu_model(gpu_model_key))
    check = physical_check(catalog, shares)
    return {
        "format": PRIOR_FORMAT,
        "gpu_model": gpu_model_key,
        "description": (
            "Linear model of log(step time on g compute slices / step time on the whole GPU) "
            "from a job's MPS profile and its co-runners'. prediction = exp(intercept + "
            "sum(coef[name] * feature[name])); features as in miso_cli/predict/features.py. "
            "Slices without a target here use the physical model of "
            "miso_cli/predict/physical.py, with the error under 'physical'."
        ),
        "provenance": provenance or {},
        "training_data": summarize(pairs),
        "features": spec.to_json(),
        "targets": targets,
        "physical": {
            "model": "t(g)/t(7g) = f + c*SM(7g)/SM(g) + m*MEM(7g)/MEM(g); c, m from 4g and 3g",
            "check": {f"mig_{g}g": v for g, v in check.items()},
            "sigma_log": {
                f"mig_{g}g": max(v["rmse_log"], DEFAULT_PHYSICAL_SIGMA.get(g, 0.1))
                for g, v in check.items()
            },
        },
    }
