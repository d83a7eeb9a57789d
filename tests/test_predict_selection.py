"""A fitted model replaces the shipped prior only when the same held-out measure says so."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_predict import synthetic_rows

from miso_cli.predict import load_predictor
from miso_cli.predict.data import ProfileRow
from miso_cli.predict.estimators import SliceRatioModel
from miso_cli.predict.fitting import fit_rows
from miso_cli.predict.persist import default_model_path
from miso_cli.predict.predictor import BlendedPredictor, prior_predictor
from miso_cli.predict.selection import compare, summary_line


def _with_ratios(rows: list[ProfileRow], ratios: list[dict[int, float]]) -> list[ProfileRow]:
    out = []
    for r, rel in zip(rows, ratios, strict=True):
        mig = {7: r.mig[7], **{g: r.mig[7] * v for g, v in rel.items() if g in (4, 3)}}
        out.append(ProfileRow(r.workload, r.mps, mig, r.jobs_in_mix, r.mix, None, r.source))
    return out


def prior_exact_rows() -> list[ProfileRow]:
    """Jobs that slow down as the shipped prior says, give or take 5 % of measurement noise:
    a fit on nine workloads can only learn the prior back, and some of the noise with it."""
    import random

    rng = random.Random(1)
    rows = synthetic_rows(families=3, per_family=3)
    prior = prior_predictor("a100-40gb")
    rel = [rel for rel, _, _ in prior.predict_rows(rows)]
    return _with_ratios(rows, [{g: v * rng.uniform(0.95, 1.05) for g, v in r.items()} for r in rel])


def far_from_prior_rows() -> list[ProfileRow]:
    """Jobs 1.8 times slower on 4g/3g than the prior says: this GPU is unlike the prior's."""
    rows = synthetic_rows(families=4, per_family=3)
    prior = prior_predictor("a100-40gb")
    rel = [rel for rel, _, _ in prior.predict_rows(rows)]
    return _with_ratios(rows, [{g: 1.8 * v for g, v in r.items()} for r in rel])


def test_the_prior_is_kept_when_the_fit_is_not_better(state_dir: Path) -> None:
    rows = prior_exact_rows()
    out = default_model_path(state_dir, "a100-40gb")
    report = fit_rows(rows, out, gpu_model_key="a100-40gb", estimators=("ridge",))
    sel = report["selection"]
    assert sel["chosen"] == "prior", summary_line(sel)
    assert sel["mape"]["prior"]["mean"] < sel["mape"]["fitted"]["mean"]
    assert sel["mape"]["prior"]["mig_4g"] < 0.05  # the noise, no more
    assert sel["cv"] == "leave-one-family-out" and sel["scored_rows"] == len(rows)
    assert out.exists()  # the fit is saved, but set aside

    pred = load_predictor(state_dir=state_dir)
    assert pred.source == "prior" and pred.metadata["model_used"] == "prior"
    assert pred.metadata["kept_aside"] == str(out)
    assert "kept aside" in pred.metadata["description"]
    assert f"{sel['mape']['fitted']['mean']:.1%}" in pred.metadata["description"]
    mps = rows[0].mps
    assert pred.predict_one(mps).relative == prior_predictor("a100-40gb").predict_one(mps).relative
    # Asked for by path, the fitted model is used as given.
    assert load_predictor(out).metadata["model_used"] == "fitted"


def test_a_better_fit_replaces_the_prior(state_dir: Path) -> None:
    rows = far_from_prior_rows()
    report = fit_rows(
        rows, default_model_path(state_dir, "a100-40gb"), gpu_model_key="a100-40gb",
        estimators=("ridge",),
    )  # fmt: skip
    sel = report["selection"]
    assert sel["chosen"] == "fitted", summary_line(sel)
    assert sel["mape"]["prior"]["mig_4g"] > 0.4  # 1.8x off
    assert (
        sel["mape"]["fitted"]["mean"] < sel["mape"]["blend"]["mean"] < sel["mape"]["prior"]["mean"]
    )
    pred = load_predictor(state_dir=state_dir)
    assert pred.source == "model" and pred.metadata["model_used"] == "fitted"
    assert "fitted on this machine" in pred.metadata["description"]


def test_the_held_out_figures_are_the_fits_own_cross_validation() -> None:
    rows = synthetic_rows()
    model = SliceRatioModel(estimators=("ridge",)).fit(rows)
    sel = compare(rows, model, gpu_model_key="a100-40gb")
    for g in (4, 3):
        # Same folds, same estimator: the fitted candidate's error is the fit's CV error.
        assert sel["mape"]["fitted"][f"mig_{g}g"] == pytest.approx(
            model.cv_[g]["mape"]["ridge"], abs=1e-4
        )


def test_one_family_cannot_show_a_fit_is_better() -> None:
    rows = far_from_prior_rows()
    one = [r for r in rows if r.family == rows[0].family]
    model = SliceRatioModel(estimators=("ridge",), min_target_families=1).fit(one)
    sel = compare(one, model, gpu_model_key="a100-40gb")
    assert sel["chosen"] == "prior" and sel["mape"]["fitted"] is None
    assert "no held-out estimate" in sel["notes"][0]


def test_the_blend_is_the_geometric_mean_of_prior_and_fit() -> None:
    rows = far_from_prior_rows()
    model = SliceRatioModel(estimators=("ridge",)).fit(rows)
    prior = prior_predictor("a100-40gb")
    from miso_cli.predict.predictor import SlicePredictor

    fitted = SlicePredictor(model, source="model", gpu_model_key="a100-40gb")
    blend = BlendedPredictor(prior, fitted, selection={"sigma_log": {"mig_4g": 0.05}})
    mps = {100: 1.0, 50: 1.3, 14: 3.0}
    a, b, c = prior.predict_one(mps), fitted.predict_one(mps), blend.predict_one(mps)
    for g in (4, 3, 2, 1):
        assert c.relative[g] == pytest.approx(math.sqrt(a.relative[g] * b.relative[g]))
    assert c.relative[7] == 1.0 and c.uncertainty[7] == 0.0
    assert c.uncertainty[4] == pytest.approx(0.05 * c.relative[4])
    assert c.source == "blend"
    rows_pred = blend.predict_rows(rows[:2])
    assert rows_pred[0][2][4] == "blend" and rows_pred[0][2][1] == "physical"


def test_another_gpu_model_says_the_prior_is_carried_over(state_dir: Path) -> None:
    pred = load_predictor(gpu_model_key="h100-80gb", state_dir=state_dir)
    assert pred.metadata["model_used"] == "prior"
    assert pred.metadata["transferred_to"] == "h100-80gb"
    assert "a100-40gb prior, carried over to h100-80gb" in pred.metadata["description"]
