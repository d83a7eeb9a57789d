"""``miso fit`` and ``miso predict`` through the CLI: exit codes and the JSON contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import parse_envelope
from test_predict import synthetic_rows, write_csv

from miso_cli.predict.observations import record_observation


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", synthetic_rows())


def test_fit_then_predict_round_trip(cli, train_csv: Path, tmp_path: Path) -> None:
    from miso_cli.predict.fitting import parse_estimators

    assert parse_estimators(" ridge, gbr ") == ("ridge", "gbr")  # the option's list
    model = tmp_path / "m.joblib"
    # ridge alone: the choice between candidates is test_predict's (one fit per run); gbr's
    # cross-validation would be nine tenths of this test's time.
    code, out, _ = cli(
        "fit", "--data", str(train_csv), "--out", str(model), "--estimators", "ridge", "--json"
    )
    assert code == 0, out
    env = parse_envelope(out)
    data = env["data"]
    assert data["targets"]["mig_3g"]["estimator"] == "ridge"
    assert data["model"] == str(model) and data["rows"] == 48
    assert set(data["targets"]) == {"mig_4g", "mig_3g", "mig_2g", "mig_1g"}
    assert data["targets"]["mig_3g"]["cv"] == "leave-one-family-out"
    assert (model.stat().st_mode & 0o777) == 0o600

    test = write_csv(tmp_path / "test.csv", synthetic_rows(seed=7, families=2, per_family=2))
    code, out, _ = cli("predict", "--model", str(model), "--data", str(test), "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    preds = data["predictions"]
    assert [p["workload"] for p in preds] == [
        f"fam{f}_{v}" for f in (0, 1) for v in (0, 1) for _ in range(3)
    ]
    first = preds[0]
    assert first["mig_7g"] == 1.0 and first["uncertainty"]["mig_7g"] == 0.0
    assert first["source"]["mig_3g"] == "model"
    assert set(first["uncertainty"]) == {"mig_7g", "mig_4g", "mig_3g", "mig_2g", "mig_1g"}
    # The file carries the truth: the command scores itself against it.
    assert data["error_vs_file"]["mig_3g"]["mape"] < 0.10


def test_predict_ignores_mig_columns(cli, tmp_path: Path) -> None:
    rows = synthetic_rows(seed=3, families=1, per_family=2)
    with_truth = write_csv(tmp_path / "a.csv", rows)
    without = write_csv(tmp_path / "b.csv", rows, with_mig=False)
    _, out_a, _ = cli("predict", "--data", str(with_truth), "--json")
    _, out_b, _ = cli("predict", "--data", str(without), "--json")
    a, b = parse_envelope(out_a)["data"], parse_envelope(out_b)["data"]
    assert a["predictions"] == b["predictions"]
    assert a["source"] == "prior" and "error_vs_file" not in b


def test_predict_marks_slices_that_do_not_fit_as_null(cli, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("workload,mps_100,mps_50,mps_14,memory_mb\nbig_1,1,1.2,2.5,12000\n")
    code, out, _ = cli("predict", "--data", str(path), "--json")
    assert code == 0
    p = parse_envelope(out)["data"]["predictions"][0]
    assert p["mig_1g"] is None and p["mig_2g"] is None and p["mig_3g"] > 1.0


def test_predict_on_the_catalog_with_the_prior(cli, shared_data: Path) -> None:
    code, out, _ = cli(
        "predict", "--data", str(shared_data / "a100-40gb" / "catalog.csv"), "--json"
    )
    assert code == 0
    data = parse_envelope(out)["data"]
    assert len(data["predictions"]) == 20
    row = next(p for p in data["predictions"] if p["workload"] == "mobilenet_256")
    assert row["source"]["mig_4g"] == "prior"  # no MPS profile in the file: prior centre
    assert data["error_vs_file"]["mig_4g"]["mape"] < 0.15


def test_fit_on_the_measured_pairs_beats_the_training_mean(
    cli, shared_data: Path, tmp_path: Path
) -> None:
    # One mix in five of the 7,300 measured rows (whole mixes, all five families; mix ids
    # go in steps of 5): the same real data, for a third of the fit's time.
    lines = (shared_data / "a100-40gb" / "mps_mig_pairs.csv").read_text().splitlines()
    pairs = tmp_path / "pairs.csv"
    kept = [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) // 5 % 5 == 0]
    pairs.write_text("\n".join([lines[0], *kept]) + "\n")
    assert lines[0].startswith("mix,") and 1000 < len(kept) < 2000
    code, out, _ = cli("fit", "--data", str(pairs), "--estimators", "ridge", "--json")
    assert code == 0
    targets = parse_envelope(out)["data"]["targets"]
    for name in ("mig_4g", "mig_3g"):
        rep = targets[name]
        assert set(rep["per_family_mape"]) == {"bert", "embedding", "gnn", "mobilenet", "resnet"}
        assert rep["mape"]["ridge"] < rep["baseline_training_mean_mape"]


def test_fit_bad_input_and_usage(cli, tmp_path: Path) -> None:
    code, out, err = cli("fit", "--json")
    assert code == 3
    assert parse_envelope(out)["errors"][0]["code"] == "BAD_INPUT"
    assert "no training data" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("workload,mps_100,mps_50,mig_7g\na_1,1,x,2\n")
    code, _, err = cli("fit", "--data", str(bad))
    assert code == 3 and "bad.csv:2: column mps_50" in err
    code, _, err = cli("fit", "--data", str(bad), "--gpu-model", "v100")
    assert code == 2 and "--gpu-model" in err
    good = write_csv(tmp_path / "g.csv", synthetic_rows(families=2, per_family=2))
    code, _, err = cli("fit", "--data", str(good), "--estimators", "svm")
    assert code == 2 and "--estimators" in err
    code, _, err = cli("fit", "--data", str(tmp_path / "missing.csv"))
    assert code == 3 and "missing.csv" in err


def test_predict_refuses_a_model_others_may_write(cli, train_csv: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.joblib"
    assert (
        cli("fit", "--data", str(train_csv), "--out", str(model), "--estimators", "ridge")[0] == 0
    )
    model.chmod(0o666)
    code, out, _ = cli("predict", "--model", str(model), "--data", str(train_csv), "--json")
    assert code == 5
    assert parse_envelope(out)["errors"][0]["code"] == "PERMISSION"


def test_fit_on_stored_observations_goes_to_the_state_dir(cli, state_dir: Path) -> None:
    for r in synthetic_rows(families=2, per_family=3):
        for g in (4, 3):
            record_observation(
                state_dir, gpu_model_key="a100-40gb", workload=r.workload, mps=r.mps,
                jobs_in_mix=1, slices=g, step_time_s=r.mig[g], step_time_7g_s=r.mig[7],
            )  # fmt: skip
    code, out, _ = cli("fit", "--estimators", "ridge", "--json")
    assert code == 0, out
    data = parse_envelope(out)["data"]
    assert data["observation_rows"] == 36
    assert data["model"] == str(state_dir / "models" / "a100-40gb.joblib")
    assert set(data["targets"]) == {"mig_4g", "mig_3g"}
    chosen = data["selection"]["chosen"]  # the fitted model replaces the prior only if better
    code, out, _ = cli(
        "predict", "--data", str(write_csv(state_dir / "q.csv", synthetic_rows()[:3])), "--json"
    )
    got = parse_envelope(out)["data"]
    assert got["model_used"] == chosen
    assert got["source"] == {"prior": "prior", "fitted": "model", "blend": "blend"}[chosen]
