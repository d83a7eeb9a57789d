"""Which model predicts: the shipped prior, the model fitted here, or the two blended.

A model fitted on a handful of local workloads can be worse than the shipped prior,
fitted on thousands of measured pairs: on the simulated A100, ``miso calibrate``
fitted one whose cross-validated error was barely better than predicting the mean.
So a fit never replaces the prior by itself. Each candidate is scored by one
held-out measure on the local rows (the rows the fit was given), where every row
is predicted by a model that has not seen its workload family:

* ``prior``: the shipped prior never saw the local rows, so all of them are held
  out (on another GPU model, the prior carried over by the physical model);
* ``fitted``: the model fitted here, refitted on each fold of the same
  grouped cross-validation (leave-one-family-out, or 5 grouped folds) with the
  estimator the fit chose for each slice size;
* ``blend``: the geometric mean of the two (the mean of their log ratios), fold by
  fold: the prior's knowledge of many workloads and the local fit's knowledge of
  this GPU, combined.

The score of a candidate is its mean absolute percentage error of the step-time
ratio (slice / whole GPU) per slice size the rows measured, averaged over those
slice sizes. The lowest wins; a tie goes to the prior (shipped and reviewed), then
the blend. A fit without a held-out estimate (one family only) cannot show it is
better: the prior is kept. The decision is stored in the model's sidecar and
:func:`miso_cli.predict.predictor.load_predictor` follows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miso_cli.predict.data import ProfileRow
from miso_cli.predict.estimators import SliceRatioModel, cv_splits

CHOICES = ("prior", "blend", "fitted")  # order = preference on a tie
MEASURE = (
    "mean absolute % error of the step-time ratio per slice size, each local row predicted "
    "without its workload family (the prior: never saw them), averaged over slice sizes"
)


def _targets(rows: Sequence[ProfileRow]) -> list[int]:
    return sorted(
        {g for r in rows for g in r.mig if g != 7 and r.ratio(g) is not None}, reverse=True
    )


def _sources(doc: dict[str, Any]) -> set[str]:
    return {Path(s).name for s in doc.get("training_data", {}).get("sources", []) if s}


def compare(
    rows: Sequence[ProfileRow],
    model: SliceRatioModel,
    *,
    gpu_model_key: str,
    random_state: int = 0,
) -> dict[str, Any]:
    """Score prior, fitted and blend on ``rows`` by the same held-out measure; choose one."""
    from miso_cli.gpu.profiles import MODELS
    from miso_cli.predict.predictor import SlicePredictor, prior_predictor

    target = MODELS.get(gpu_model_key)
    rows = list(rows)
    slices = _targets(rows)
    prior = prior_predictor(gpu_model_key)
    doc = prior.core.document  # type: ignore[union-attr]
    in_sample = bool(_sources(doc) & {r.source.rsplit(":", 1)[0].rsplit("/", 1)[-1] for r in rows})
    prior_rel = [rel for rel, _, _ in prior.predict_rows(rows, gpu_model=target)]
    kind, splits = cv_splits([r.family for r in rows])
    fitted_rel: list[dict[int, float] | None] = [None] * len(rows)
    for train, test in splits:
        fold = SliceRatioModel(
            estimators=model.estimators,
            random_state=random_state,
            min_target_rows=model.min_target_rows,
            min_target_families=model.min_target_families,
        )
        try:
            # The slices the model learned, from what this fold has (not the minimums
            # the whole data met): the same regressors its own cross-validation scored.
            fold.fit([rows[i] for i in train], choices=dict(model.chosen_), only=model.targets_)
        except ValueError:
            continue  # nothing usable left in this fold: its rows get no held-out estimate
        pred = SlicePredictor(fold, source="model", gpu_model_key=gpu_model_key)
        # All rows, so co-runner features see whole mixes; only the held-out ones count.
        got = pred.predict_rows(rows, gpu_model=target)
        for i in test:
            fitted_rel[int(i)] = got[int(i)][0]
    errors: dict[str, dict[int, list[float]]] = {c: {g: [] for g in slices} for c in CHOICES}
    logs: dict[str, dict[int, list[float]]] = {c: {g: [] for g in slices} for c in CHOICES}
    for i, r in enumerate(rows):
        f = fitted_rel[i]
        for g in slices:
            truth = r.ratio(g)
            p = prior_rel[i].get(g)
            if truth is None or p is None or f is None or g not in f:
                continue  # scored on the same rows for every candidate, or not at all
            cands = {"prior": p, "fitted": f[g], "blend": math.sqrt(p * f[g])}
            for c, v in cands.items():
                errors[c][g].append(abs(v / truth - 1.0))
                logs[c][g].append(math.log(v / truth))
    scored = [g for g in slices if errors["prior"][g]]
    mape: dict[str, dict[str, float] | None] = {}
    sigma: dict[str, dict[str, float]] = {}
    for c in CHOICES:
        if not scored:
            mape[c] = None
            continue
        per = {f"mig_{g}g": sum(errors[c][g]) / len(errors[c][g]) for g in scored}
        mape[c] = {k: round(v, 5) for k, v in per.items()}
        mape[c]["mean"] = round(sum(per.values()) / len(per), 5)  # type: ignore[index]
        sigma[c] = {
            f"mig_{g}g": round(math.sqrt(sum(x * x for x in logs[c][g]) / len(logs[c][g])), 5)
            for g in scored
        }
    notes: list[str] = []
    if in_sample:
        # The prior was fitted on these very rows: its error on them is in-sample. Its own
        # grouped-CV figures (same measure, on the same rows) stand in; the blend is not scored.
        for key, t in doc.get("targets", {}).items():
            if mape["prior"] is not None and key in mape["prior"] and t.get("cv_mape") is not None:
                mape["prior"][key] = float(t["cv_mape"])
        if mape["prior"] is not None:
            vals = [v for k, v in mape["prior"].items() if k != "mean"]
            mape["prior"]["mean"] = round(sum(vals) / len(vals), 5)
        mape["blend"] = None
        notes.append("the prior was fitted on these rows: its own grouped-CV error is used")
    if not scored:
        chosen = "prior"
        notes.append(
            "no held-out estimate for the fitted model (it needs rows of two or more "
            "workload families measured on a smaller slice): the prior is kept"
        )
    else:
        means = {c: m["mean"] for c, m in mape.items() if m is not None}
        chosen = min(means, key=lambda c: (means[c], CHOICES.index(c)))
    return {
        "chosen": chosen,
        "measure": MEASURE,
        "cv": kind,
        "rows": len(rows),
        "scored_rows": len({i for i in range(len(rows)) if fitted_rel[i] is not None}),
        "families": len({r.family for r in rows}),
        "mape": mape,
        "sigma_log": sigma.get(chosen, {}),
        "prior": {
            "gpu_model": prior.core.gpu_model_key,  # type: ignore[union-attr]
            "path": str(prior.core.path) if prior.core.path else None,  # type: ignore[union-attr]
        },
        "notes": notes,
    }


def summary_line(sel: dict[str, Any]) -> str:
    """``held-out error: prior 11.0%, fitted 16.4%, blend 12.1% -> prior``."""
    parts = []
    for c in CHOICES:
        m = (sel.get("mape") or {}).get(c)
        parts.append(f"{c} {m['mean']:.1%}" if m else f"{c} n/a")
    return f"held-out error: {', '.join(parts)} -> {sel.get('chosen')}"
