"""The simulated GPU's MPS performance model."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import pytest

from miso_cli.gpu.sim import simmps
from miso_cli.spec.catalog import Workload, load_catalog

BIG = Workload("big_1", {7: 100.0, 3: 200.0}, {100: 100.0, 50: 130.0, 14: 400.0})
SMALL = Workload("small_1", {7: 10.0, 1: 14.0}, {100: 10.0, 50: 10.5, 14: 14.0})


def test_alone_is_the_catalog_curve() -> None:
    for pct in (100, 50, 14, 75, 30):
        assert simmps.step_time_ms(BIG, pct, []) == pytest.approx(BIG.mps_step_time_ms(pct))


def test_caps_that_fit_side_by_side_do_not_interfere() -> None:
    co = [(SMALL, 14.0)] * 6
    assert simmps.step_time_ms(BIG, 14, co) == pytest.approx(400.0)
    assert simmps.step_time_ms(BIG, 50, [(SMALL, 50.0)]) == pytest.approx(130.0)


def test_oversubscription_slows_in_proportion_to_the_excess() -> None:
    one = simmps.step_time_ms(BIG, 100, [(SMALL, 100.0)])
    six = simmps.step_time_ms(BIG, 100, [(SMALL, 100.0)] * 6)
    assert one == pytest.approx(100.0 * (1 + simmps.INTERFERENCE))
    assert six == pytest.approx(100.0 * (1 + 6 * simmps.INTERFERENCE))
    # the victim does not matter, only the requested SMs: same factor for the small job
    assert simmps.step_time_ms(SMALL, 100, [(BIG, 100.0)]) / 10.0 == pytest.approx(one / 100.0)


def test_more_co_runners_never_speed_a_job_up() -> None:
    times = [simmps.step_time_ms(BIG, 50, [(SMALL, 50.0)] * k) for k in range(7)]
    assert times == sorted(times)
    assert times[-1] > times[0]


def test_colocated_profile_matches_pairwise_calls() -> None:
    mix = [BIG, SMALL, SMALL]
    got = simmps.colocated_step_times_ms(mix, 50)
    assert got[0] == pytest.approx(simmps.step_time_ms(BIG, 50, [(SMALL, 50), (SMALL, 50)]))
    assert got[1] == got[2]


@pytest.mark.parametrize("bad", [0, -5, 101, float("nan")])
def test_bad_percentages_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        simmps.step_time_ms(BIG, bad, [])
    with pytest.raises(ValueError):
        simmps.step_time_ms(BIG, 50, [(SMALL, bad)])


def test_model_explains_the_measured_mixes(shared_data: Path) -> None:
    """On the A100 mixes the model must cut the level-ratio error well below no-interference."""
    data = shared_data / "a100-40gb"
    cat = load_catalog(data / "catalog.csv")
    errors: dict[str, list[float]] = defaultdict(list)
    with open(data / "mps_mig_pairs.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            w = cat[row["workload"]]
            n = int(row["jobs_in_mix"])
            for level in (100, 50):
                seen = math.log(float(row[f"mps_{level}"]) / float(row["mps_14"]))
                co = [(w, float(level))] * (n - 1)
                co14 = [(w, 14.0)] * (n - 1)
                model = math.log(
                    simmps.step_time_ms(w, level, co) / simmps.step_time_ms(w, 14, co14)
                )
                alone = math.log(w.mps_step_time_ms(level) / w.mps_step_time_ms(14))
                errors["model"].append(abs(model - seen))
                errors["none"].append(abs(alone - seen))
    mae = {k: sum(v) / len(v) for k, v in errors.items()}
    assert mae["model"] < 0.26
    assert mae["model"] < 0.5 * mae["none"]


def test_pessimistic_model_shares_no_more_than_mig_would() -> None:
    """At caps summing to 100 % or less, co-runners slow a job down to MIG's trade-off."""
    co = [(BIG, 14.0)] * 6
    optimistic = simmps.step_time_ms(BIG, 14, co)
    pessimistic = simmps.step_time_ms(BIG, 14, co, "pessimistic")
    assert optimistic == pytest.approx(400.0)
    assert pessimistic > optimistic
    # Seven BIG jobs together make no more progress than the best MIG trade-off allows.
    speed = 100.0 / pessimistic
    assert 7 * simmps.mig_capacity(BIG, speed) <= 1.0 + 1e-9
    # Alone, nothing changes; oversubscription still slows at least as much as before.
    assert simmps.step_time_ms(BIG, 14, [], "pessimistic") == pytest.approx(400.0)
    over = [(SMALL, 100.0)] * 6
    assert simmps.step_time_ms(BIG, 100, over, "pessimistic") >= simmps.step_time_ms(BIG, 100, over)
    with pytest.raises(ValueError, match="unknown MPS model"):
        simmps.step_time_ms(BIG, 14, co, "rosy")


def test_mig_envelope_is_concave_from_the_origin() -> None:
    hull = simmps.mig_envelope(BIG)
    assert hull == [(0.0, 0.0), (3 / 7, 0.5), (1.0, 1.0)]
    assert simmps.mig_capacity(BIG, 0.25) == pytest.approx(3 / 14)
    assert simmps.mig_capacity(BIG, 1.0) == pytest.approx(1.0)
