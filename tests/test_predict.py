"""The predictor core: data, features, physical model, prior, fit/save/load, observations."""

from __future__ import annotations

import csv
import json
import math
import os
import random
from pathlib import Path

import pytest
from conftest import shared_once

from miso_cli.errors import BadInput, PermissionDenied
from miso_cli.gpu.profiles import MODELS
from miso_cli.predict import SlicePredictor, load_predictor
from miso_cli.predict.data import ProfileRow, read_profile_csv
from miso_cli.predict.estimators import SliceRatioModel
from miso_cli.predict.features import FeatureSpec, level_time
from miso_cli.predict.observations import (
    load_observations,
    observation_rows,
    observations_path,
    record_observation,
)
from miso_cli.predict.persist import load_model, save_model, sidecar
from miso_cli.predict.physical import Shares, decompose, ratio_on
from miso_cli.predict.prior import load_prior, priors_dir

A100 = MODELS["a100-40gb"]
SHARES = Shares.of(A100)


def synthetic_rows(seed: int = 0, families: int = 4, per_family: int = 4) -> list[ProfileRow]:
    """Jobs whose MIG ratios follow the physical model and whose MPS profile reflects c."""
    rng = random.Random(seed)
    rows: list[ProfileRow] = []
    mix = 0
    for f in range(families):
        for v in range(per_family):
            c = 0.05 + 0.5 * rng.random()
            m = 0.3 * rng.random()
            base = rng.uniform(5, 500)  # units differ per row: the model must be scale-free
            mig = {g: base * ratio_on(g, c, m, SHARES) for g in (7, 4, 3, 2, 1)}
            for _ in range(3):
                noise = 1 + 0.01 * rng.uniform(-1, 1)
                scale = rng.uniform(0.5, 2.0)
                mps = {
                    100: scale,
                    50: scale * (1 + 0.9 * c) * noise,
                    14: scale * (1 + 5.0 * c + 0.5 * m) * noise,
                }
                rows.append(
                    ProfileRow(
                        workload=f"fam{f}_{v}",
                        mps=mps,
                        mig=dict(mig),
                        jobs_in_mix=1,
                        mix=f"m{mix}",
                        source=f"synthetic:{len(rows) + 1}",
                    )
                )
                mix += 1
    return rows


def write_csv(path: Path, rows: list[ProfileRow], *, with_mig: bool = True) -> Path:
    levels = sorted({p for r in rows for p in r.mps}, reverse=True)
    slices = sorted({g for r in rows for g in r.mig}, reverse=True) if with_mig else []
    cols = ["mix", "workload", "jobs_in_mix"] + [f"mps_{p}" for p in levels]
    cols += [f"mig_{g}g" for g in slices]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            mix = r.mix.split("#")[-1] if r.mix else ""
            w.writerow(
                [mix, r.workload, r.jobs_in_mix]
                + [r.mps.get(p, "") for p in levels]
                + [r.mig.get(g, "") for g in slices]
            )
    return path


# -- data contract ---------------------------------------------------------------------


def test_csv_errors_name_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("workload,mps_100,mps_50,mig_7g\nresnet_64,10,abc,5\n")
    with pytest.raises(BadInput, match=r"bad\.csv:2: column mps_50: 'abc' is not a number"):
        read_profile_csv(bad)
    bad.write_text("name,mps_100,mps_50\nx,1,2\n")
    with pytest.raises(BadInput, match=r"bad\.csv:1: needs a 'workload' column"):
        read_profile_csv(bad)
    bad.write_text("workload,mps_50,mig_7g\nx,1,2\n")
    with pytest.raises(BadInput, match="mps_100"):
        read_profile_csv(bad)
    bad.write_text("workload,mps_100,mps_50,mig_7g\nx,1,2,-3\n")
    with pytest.raises(BadInput, match=r"bad\.csv:2: column mig_7g: must be a positive"):
        read_profile_csv(bad)
    bad.write_text("mix,workload,jobs_in_mix,mps_100,mps_50\n1,a_1,1,1,2\n1,b_1,1,1,2\n")
    with pytest.raises(BadInput, match=r"bad\.csv:2: mix '1' has 2 rows but jobs_in_mix is 1"):
        read_profile_csv(bad)
    bad.write_text("workload,mps_100,mps_50\na_1,1,2,3\n")
    with pytest.raises(BadInput, match=r"bad\.csv:2: more cells"):
        read_profile_csv(bad)


def test_csv_reads_mixes_scoped_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "mix,workload,jobs_in_mix,mps_100,mps_50,mps_14,mig_7g,mig_3g\n"
        "4,a_1,2,1.0,1.2,3.0,10,15\n4,b_2,2,2.0,2.1,2.5,20,21\n,c_1,,1,1.5,2,,\n"
    )
    rows = read_profile_csv(path)
    assert [r.mix for r in rows] == ["p.csv#4", "p.csv#4", None]
    assert rows[2].jobs_in_mix == 1 and rows[2].mig == {}
    assert rows[0].ratio(3) == pytest.approx(1.5)
    assert rows[0].family == "a"


# -- features and the physical model ---------------------------------------------------


def test_level_time_is_exact_where_measured_and_interpolates_between() -> None:
    mps = {100: 10.0, 50: 12.0, 14: 40.0}
    assert level_time(mps, 50) == 12.0
    mid = level_time(mps, 25)
    assert 12.0 < mid < 40.0
    assert level_time(mps, 7) == pytest.approx(80.0)  # throughput in proportion below 14 %


def test_features_are_scale_free_and_see_co_runners() -> None:
    spec = FeatureSpec([50, 14])
    a = spec.vector({100: 1.0, 50: 1.3, 14: 3.0}, 2, [{100: 2.0, 50: 2.2, 14: 3.0}])
    b = spec.vector({100: 1000.0, 50: 1300.0, 14: 3000.0}, 2, [{100: 7.0, 50: 7.7, 14: 10.5}])
    assert a == pytest.approx(b)
    alone = spec.vector({100: 1.0, 50: 1.3, 14: 3.0}, 2)
    assert alone[:3] == a[:3] and alone[3:] != a[3:]
    assert len(a) == len(spec.names)


def test_physical_model_recovers_its_parameters() -> None:
    c, m = 0.3, 0.2
    ratios = {g: ratio_on(g, c, m, SHARES) for g in (4, 3)}
    assert decompose(ratios, SHARES) == pytest.approx((c, m))
    # Noise that makes 3g look faster than 4g must not give a negative SM share.
    c2, m2 = decompose({4: 1.05, 3: 1.0}, SHARES)
    assert c2 >= 0 and m2 >= 0


# -- the shipped prior -----------------------------------------------------------------


def test_the_shipped_prior_loads_from_package_data(state_dir: Path) -> None:
    assert (priors_dir() / "a100-40gb.json").is_file()
    prior = load_prior("a100-40gb")
    assert set(prior.coef) == {4, 3}
    doc = prior.document
    assert doc["provenance"]["measurements"]
    assert doc["targets"]["mig_4g"]["cv"] == "leave-one-family-out"
    pred = load_predictor(state_dir=state_dir)
    assert pred.source == "prior"
    p = pred.predict_one({100: 30.0, 50: 39.0, 14: 95.0})
    assert p.source == "prior"
    assert sorted(p.relative) == [1, 2, 3, 4, 7]
    assert p.relative[7] == 1.0 and p.uncertainty[7] == 0.0
    assert 1.0 < p.relative[4] <= p.relative[3] < p.relative[2] < p.relative[1]
    rel_sd = {g: p.uncertainty[g] / p.relative[g] for g in (4, 3, 2, 1)}
    assert rel_sd[2] > rel_sd[3] and rel_sd[1] > rel_sd[2]  # physical slices: less certain


def test_a_sensitive_job_is_predicted_slower_than_an_insensitive_one() -> None:
    pred = load_predictor(state_dir=Path("/nonexistent"))
    flat = pred.predict_one({100: 1.0, 50: 1.0, 14: 1.15})
    steep = pred.predict_one({100: 1.0, 50: 1.3, 14: 3.4})
    for g in (4, 3, 2, 1):
        assert steep.relative[g] > flat.relative[g]


def test_prediction_leaves_out_slices_the_job_does_not_fit() -> None:
    pred = load_predictor(state_dir=Path("/nonexistent"))
    p = pred.predict_one({100: 1.0, 50: 1.2, 14: 2.0}, memory_mb=8000)
    assert sorted(p.relative) == [2, 3, 4, 7]  # 1g.5gb is too small
    p = pred.predict_one({100: 1.0, 50: 1.2, 14: 2.0}, memory_mb=30000)
    assert sorted(p.relative) == [7]


def test_other_gpu_models_get_physical_predictions_for_their_slices() -> None:
    pred = load_predictor(state_dir=Path("/nonexistent"))
    h100 = MODELS["h100-80gb"]
    p = pred.predict_one({100: 1.0, 50: 1.2, 14: 2.5}, gpu_model=h100)
    assert p.source == "physical"
    assert sorted(p.relative) == sorted({x.slices for x in h100.standard_profiles()})
    a100 = pred.predict_one({100: 1.0, 50: 1.2, 14: 2.5})
    assert a100.source == "prior"


def test_without_a_usable_profile_the_prior_centre_is_used() -> None:
    pred = load_predictor(state_dir=Path("/nonexistent"))
    p = pred.predict_one({100: 5.0})
    assert p.source == "prior" and p.relative[4] > 1.0


def test_predict_many_matches_predict_one_and_the_cache_hands_out_copies() -> None:
    pred = load_predictor(state_dir=Path("/nonexistent"))
    jobs = [
        {"mps": {100: 1.0, 50: 1.2, 14: 2.5}},
        {"mps": {100: 2.0, 50: 2.1, 14: 2.6}, "jobs_in_mix": 3, "mix": [{100: 1, 50: 1, 14: 2}]},
        {"mps": {100: 2.0}},
    ]
    many = pred.predict_many(jobs)
    for job, p in zip(jobs, many, strict=True):
        one = pred.predict_one(
            job["mps"], jobs_in_mix=job.get("jobs_in_mix", 1), mix=job.get("mix")
        )
        assert one.relative == pytest.approx(p.relative)
        assert one.source == p.source
    first = pred.predict_one({100: 1.0, 50: 1.2, 14: 2.5})
    first.relative[4] = 99.0
    assert pred.predict_one({100: 1.0, 50: 1.2, 14: 2.5}).relative[4] != 99.0


# -- fit, save, load -------------------------------------------------------------------


def _fit_synthetic() -> tuple[SliceRatioModel, list[ProfileRow]]:
    rows = synthetic_rows()
    return SliceRatioModel(estimators=("ridge", "gbr", "blend")).fit(rows), rows


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[SliceRatioModel, list[ProfileRow]]:
    # Fitted once per test run, whichever pytest-xdist workers run these tests.
    return shared_once(tmp_path_factory, "test_predict-fitted", _fit_synthetic)


def test_fit_learns_every_measured_slice_and_reports_grouped_cv(fitted) -> None:
    model, rows = fitted
    assert sorted(model.targets_) == [1, 2, 3, 4]
    rep = model.cv_[3]
    assert rep["cv"] == "leave-one-family-out"
    assert set(rep["per_family_mape"]) == {"fam0", "fam1", "fam2", "fam3"}
    assert rep["estimator"] in ("ridge", "gbr", "blend")
    assert rep["mape"][rep["estimator"]] == min(rep["mape"].values())
    # The data follows a smooth law: the chosen model beats predicting the mean.
    assert rep["mape"][rep["estimator"]] < rep["baseline_training_mean_mape"]


def test_saved_model_is_private_and_round_trips(fitted, tmp_path: Path) -> None:
    model, rows = fitted
    path = tmp_path / "models" / "m.joblib"
    meta = save_model(path, model, rows, gpu_model_key="a100-40gb", driver="550.54")
    for p in (path, sidecar(path)):
        assert (p.stat().st_mode & 0o777) == 0o600
    assert meta["driver"] == "550.54" and meta["sklearn_version"]
    assert meta["features"]["names"] == model.spec_.names
    assert meta["training_data"]["rows"] == len(rows)
    pred = load_predictor(path)
    assert pred.source == "model"
    direct = SlicePredictor(model, source="model", gpu_model_key="a100-40gb")
    mps = {100: 1.0, 50: 1.25, 14: 2.4}
    assert pred.predict_one(mps).relative == pytest.approx(direct.predict_one(mps).relative)


def test_loading_refuses_files_others_may_write(fitted, tmp_path: Path) -> None:
    model, rows = fitted
    path = tmp_path / "m.joblib"
    save_model(path, model, rows, gpu_model_key="a100-40gb")
    os.chmod(path, 0o620)
    with pytest.raises(PermissionDenied, match="writable by group or others"):
        load_model(path)
    os.chmod(path, 0o600)
    os.chmod(sidecar(path), 0o606)
    with pytest.raises(PermissionDenied):
        load_model(path)


@pytest.mark.skipif(os.getuid() != 0, reason="changing a file's owner needs root")
def test_loading_refuses_files_another_user_owns(fitted, tmp_path: Path) -> None:
    model, rows = fitted
    path = tmp_path / "m.joblib"
    save_model(path, model, rows, gpu_model_key="a100-40gb")
    os.chown(path, 4242, -1)
    with pytest.raises(PermissionDenied, match="owned by uid 4242"):
        load_model(path)


def test_sklearn_version_mismatch_refits_without_unpickling(fitted, tmp_path: Path) -> None:
    model, rows = fitted
    path = tmp_path / "m.joblib"
    save_model(path, model, rows, gpu_model_key="a100-40gb")
    doc = json.loads(sidecar(path).read_text())
    doc["metadata"]["sklearn_version"] = "0.0.1"
    sidecar(path).write_text(json.dumps(doc))
    path.write_bytes(b"not a pickle: opening it would fail")
    loaded, meta = load_model(path)
    assert meta["refitted_from"] == "0.0.1"
    assert loaded.chosen_ == model.chosen_
    mps = {100: 1.0, 50: 1.25, 14: 2.4}
    a = SlicePredictor(loaded, source="model", gpu_model_key="a100-40gb").predict_one(mps)
    b = SlicePredictor(model, source="model", gpu_model_key="a100-40gb").predict_one(mps)
    assert a.relative == pytest.approx(b.relative)
    load_model(path)  # saved again with this scikit-learn: loads directly now


def test_a_corrupt_model_file_is_bad_input(fitted, tmp_path: Path) -> None:
    model, rows = fitted
    path = tmp_path / "m.joblib"
    save_model(path, model, rows, gpu_model_key="a100-40gb")
    path.write_bytes(b"garbage")
    with pytest.raises(BadInput, match="cannot load model"):
        load_model(path)


def test_the_state_dir_model_replaces_the_prior(fitted, state_dir: Path) -> None:
    model, rows = fitted
    save_model(state_dir / "models" / "a100-40gb.joblib", model, rows, gpu_model_key="a100-40gb")
    assert load_predictor(state_dir=state_dir).source == "model"
    assert load_predictor(gpu_model_key="h100-80gb", state_dir=state_dir).source == "prior"


# -- observations ----------------------------------------------------------------------


def test_observations_append_merge_and_survive_a_torn_line(state_dir: Path) -> None:
    mps = {100: 2.0, 50: 2.4, 14: 5.0}
    record_observation(
        state_dir, gpu_model_key="a100-40gb", workload="x_1", mps=mps, jobs_in_mix=1,
        slices=7, step_time_s=0.10, step_time_7g_s=None,
    )  # fmt: skip
    record_observation(
        state_dir, gpu_model_key="a100-40gb", workload="x_1", mps=mps, jobs_in_mix=2,
        slices=3, step_time_s=0.15, step_time_7g_s=None,
    )  # fmt: skip
    path = observations_path(state_dir, "a100-40gb")
    assert (path.stat().st_mode & 0o777) == 0o600
    with open(path, "a") as fh:
        fh.write('{"workload": "torn')
    obs = load_observations(state_dir, "a100-40gb")
    assert [o["slices"] for o in obs] == [7, 3]
    rows = observation_rows(state_dir, "a100-40gb")
    three = [r for r in rows if 3 in r.mig]
    assert len(three) == 1 and three[0].ratio(3) == pytest.approx(1.5)
    assert three[0].jobs_in_mix == 2
    with pytest.raises(BadInput, match="step_time_s must be positive"):
        record_observation(
            state_dir, gpu_model_key="a100-40gb", workload="x_1", mps=mps, jobs_in_mix=1,
            slices=3, step_time_s=-1, step_time_7g_s=None,
        )  # fmt: skip


def test_fit_on_rows_with_mixes_uses_co_runners() -> None:
    rows = synthetic_rows(per_family=3)
    # Pair rows up into mixes of two: co-runner features then differ from the job's own.
    paired = []
    for i in range(0, len(rows) - 1, 2):
        for r in rows[i : i + 2]:
            paired.append(ProfileRow(r.workload, r.mps, r.mig, 2, f"p{i}", None, r.source))
    spec = FeatureSpec.from_rows(paired)
    X = spec.matrix(paired)
    co_mean = spec.names.index("co_mean_r14")
    own = spec.names.index("own_r14")
    assert X[0, co_mean] == pytest.approx(X[1, own])
    assert math.isfinite(float(X.sum()))


def test_interaction_features_follow_the_mix_size_and_old_specs_keep_their_names() -> None:
    spec = FeatureSpec([50, 14])
    x = spec.vector({100: 1.0, 50: 1.3, 14: 3.0}, 4)
    named = dict(zip(spec.names, x, strict=True))
    assert named["own_r14_x_jobs"] == pytest.approx(4 * math.log(3.0))
    assert named["own_r50_per_job"] == pytest.approx(math.log(1.3) / 4)
    # A spec pickled before the interaction features existed has no such attribute:
    # it must keep producing the 9 columns its estimators were fitted on.
    old = FeatureSpec([50, 14])
    del old.__dict__["interactions"]
    assert len(old.names) == 9 and len(old.vector({100: 1.0, 50: 1.3, 14: 3.0}, 4)) == 9
    assert "own_r14_x_jobs" not in old.names


def test_slices_measured_only_beside_solo_profiles_are_left_to_the_physical_model() -> None:
    rows = synthetic_rows(per_family=3)
    # 4g/3g measured on jobs profiled in mixes of two; 2g/1g only on solo profiles.
    mixed = []
    for i in range(0, len(rows) - 1, 2):
        for r in rows[i : i + 2]:
            mig = {g: t for g, t in r.mig.items() if g in (7, 4, 3)}
            mixed.append(ProfileRow(r.workload, r.mps, mig, 2, f"p{i}", None, r.source))
    solo = [ProfileRow(r.workload, r.mps, dict(r.mig), 1, None, None, r.source) for r in rows]
    model = SliceRatioModel(estimators=("ridge",)).fit(mixed + solo)
    assert sorted(model.targets_) == [3, 4]
    assert set(model.not_learned_) == {1, 2}
    pred = SlicePredictor(model, source="model", gpu_model_key="a100-40gb")
    p = pred.predict_one({100: 1.0, 50: 1.27, 14: 2.5}, mix=[{100: 1.0, 50: 1.1, 14: 1.6}])
    assert p.source == "model"
    assert p.relative[2] > p.relative[3] > p.relative[4] > 1.0
    # Solo data alone: every measured slice is learned, as before.
    alone = SliceRatioModel(estimators=("ridge",)).fit(solo)
    assert sorted(alone.targets_) == [1, 2, 3, 4] and not alone.not_learned_
