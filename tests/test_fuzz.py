"""Every file miso reads, damaged by hypothesis: a named error or a result, no traceback.

The targets and the damage live in :mod:`miso_cli.spec.fuzzing` (``benchmarks/chaos.py``
runs them by the thousand); here each format gets a few dozen draws, plus the
inputs that crashed miso before, kept as regressions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miso_cli.spec import fuzzing

FAST = ["queue", "plan", "trace", "catalog", "csv", "journal", "sim_state", "intent"]
SLOW = ["model", "sidecar"]  # scikit-learn: fewer draws


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    return fuzzing.seeds(tmp_path_factory.mktemp("seeds"))


def _check(name: str, data: bytes, tmp: Path) -> None:
    out = fuzzing.try_input(fuzzing.TARGETS[name], data, tmp, budget_s=60)
    assert out.ok, f"{name}: {out.error}"


@pytest.mark.parametrize("name", FAST + SLOW)
def test_every_seed_loads(name: str, seeds, tmp_path: Path) -> None:
    _check(name, seeds[name], tmp_path)


@pytest.mark.parametrize("name", FAST)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False))
def test_damaged_inputs_never_crash(name: str, rng: random.Random, seeds, tmp_path: Path) -> None:
    _check(name, fuzzing.mutate(seeds[name], rng), tmp_path / "x")


@pytest.mark.parametrize("name", SLOW)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False))
def test_damaged_models_never_crash(name: str, rng: random.Random, seeds, tmp_path: Path) -> None:
    _check(name, fuzzing.mutate(seeds[name], rng), tmp_path / "x")


@pytest.mark.parametrize("name", FAST)
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(name: str, data: bytes, tmp_path: Path) -> None:
    _check(name, data, tmp_path / "x")


# ------------------------------------------------------------ the crashes the issue found


def test_a_deeply_nested_plan_is_bad_input(tmp_path: Path) -> None:
    _check("plan", b'{"gpus":' + b"[" * 100000 + b"]" * 100000 + b"}", tmp_path)


def test_a_5000_digit_gpu_index_is_bad_input(tmp_path: Path, cli) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"gpus":[{"index":' + "9" * 5000 + ',"layout":["7g.40gb"]}]}')
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "--plan", str(plan))
    assert code == 3 and "too many digits" in err and "set_int_max_str_digits" not in err


def test_a_sidecar_of_another_sklearn_with_a_damaged_cv_is_bad_input_or_refit(
    tmp_path: Path, seeds
) -> None:
    doc = json.loads(seeds["sidecar"])
    for cv in (7, {"mig_4g": 3}, {"mig_4g": {"sigma_log": "1e999"}}, {"mig_xg": {}}, []):
        doc["metadata"]["cv"] = cv
        _check("sidecar", json.dumps(doc).encode(), tmp_path / "cv")
    doc["metadata"]["cv"] = {"mig_4g": {"sigma_log": 1e308 * 10}}  # inf
    _check("sidecar", json.dumps(doc).encode(), tmp_path / "inf")
    doc["metadata"]["estimators"] = {"mig_99999999999999999999999g": "ridge"}
    _check("sidecar", json.dumps(doc).encode(), tmp_path / "est")


@pytest.mark.parametrize("name", ["journal", "sim_state", "intent", "sidecar"])
def test_deeply_nested_json_state_files_are_named_errors(name: str, tmp_path: Path) -> None:
    _check(name, b"[" * 100000 + b"]" * 100000, tmp_path)


def _catalog_without(column: str) -> str:
    lines = fuzzing.TARGETS["catalog"].seed(Path(".")).decode().splitlines()
    k = lines[0].split(",").index(column)
    return "\n".join(",".join(c for i, c in enumerate(ln.split(",")) if i != k) for ln in lines)


@pytest.mark.parametrize(
    "text",
    [
        _catalog_without("mig_2g"),
        fuzzing.TARGETS["catalog"].seed(Path(".")).decode().replace(",20.0,", ",1e308,", 1),
    ],
    ids=["no-mig_2g", "1e308"],
)
def test_odd_catalogs_simulate_or_are_refused_in_one_line(text: str, tmp_path: Path, cli) -> None:
    cat = tmp_path / "catalog.csv"
    cat.write_text(text + "\n")
    trace = tmp_path / "trace.csv"
    trace.write_bytes(fuzzing.TARGETS["trace"].seed(tmp_path))
    code, _, err = cli(
        "simulate", "--trace", str(trace), "--catalog", str(cat), "--policy", "miso,static"
    )
    assert code in (0, 2, 3), err
    assert "internal error" not in err and "Traceback" not in err


def test_a_trace_too_long_to_simulate_is_refused_with_the_limit(tmp_path: Path, cli) -> None:
    trace = tmp_path / "burst.csv"
    rows = [f"{i},{i % 60},toy-mlp_32,120" for i in range(1500)]
    trace.write_text("job,arrival_s,workload,duration_7g_s\n" + "\n".join(rows) + "\n")
    code, _, err = cli(
        "simulate", "--trace", str(trace), "--catalog", str(fuzzing.EXAMPLES / "catalog.csv")
    )
    assert code == 2 and "1500 jobs" in err and "--max-jobs" in err
