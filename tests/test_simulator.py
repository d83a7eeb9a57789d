"""The virtual-clock driver: trace validation, timing, costs, counting, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from miso_cli.errors import BadInput
from miso_cli.gpu.layouts import Layout, place
from miso_cli.gpu.profiles import MODELS
from miso_cli.policy.core import ClusterView, Event, GpuTarget, Policy, SlicePrediction
from miso_cli.policy.simple import NoPart
from miso_cli.sim.simulator import (
    SimConfig,
    TraceJob,
    load_trace,
    memory_need_mb,
    restart_cost_for,
    simulate,
)
from miso_cli.spec.catalog import Catalog, Workload, load_catalog

A100 = MODELS["a100-40gb"]

# Made-up workloads with round numbers, so the expected times are easy to check.
CAT = Catalog(
    None,
    {
        "toy_a": Workload("toy_a", {7: 100.0, 4: 150.0, 3: 200.0, 2: 300.0, 1: 500.0}, {}),
        "toy_big": Workload("toy_big", {7: 100.0, 4: 120.0, 3: 140.0, 2: None, 1: None}, {}),
    },
)


def _trace(*rows: tuple[str, float, str, float]) -> list[TraceJob]:
    return [TraceJob(*r) for r in rows]


def test_nopart_runs_jobs_back_to_back() -> None:
    trace = _trace(("a", 0, "toy_a", 100), ("b", 10, "toy_a", 50))
    res = simulate(trace, CAT, [A100], NoPart())
    rec = {j.name: j for j in res.jobs}
    assert rec["a"].finish_s == pytest.approx(100)
    assert rec["b"].start_s == pytest.approx(100)
    assert rec["b"].finish_s == pytest.approx(150)
    s = res.summary()
    assert s["mean_jct_s"] == pytest.approx((100 + 140) / 2)
    assert s["mean_queue_s"] == pytest.approx(45)
    assert s["makespan_s"] == pytest.approx(150)
    assert s["reconfigurations"] == 0 and s["migrations"] == 0


class _FixedThenMove(Policy):
    """Start a on 3g; when b arrives, move a to 4g and start b on the 3g."""

    name = "test"
    knowledge = "none"

    def __init__(self) -> None:
        self.layout = place(A100, ["4g.20gb", "3g.20gb"])
        self.four = next(s for s in self.layout.slices if s.slices == 4)
        self.three = next(s for s in self.layout.slices if s.slices == 3)

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        if event.kind == "arrival" and event.job == "a":
            return [GpuTarget(0, "mig", self.layout, {"a": self.three})]
        if event.kind == "arrival" and event.job == "b":
            return [GpuTarget(0, "mig", self.layout, {"a": self.four, "b": self.three})]
        return []


def test_migration_pays_restart_and_reconfiguration_time() -> None:
    trace = _trace(("a", 0, "toy_a", 100), ("b", 50, "toy_a", 1))
    cfg = SimConfig(restart_costs=30.0, reconfig_s=5.0)
    res = simulate(trace[:1] + trace[1:], CAT, [A100], _FixedThenMove(), config=cfg)
    a = next(j for j in res.jobs if j.name == "a")
    # 0..5 s creating instances; 5..50 s on 3g at half speed of 7g (45 s = 22.5 s of 7g work);
    # 50..80 s restart; then 77.5 s of 7g work at 1.5x -> 116.25 s.
    assert a.finish_s == pytest.approx(5 + 45 + 30 + 77.5 * 1.5)
    assert res.migrations == 1
    assert res.reconfigurations == 1  # the layout itself never changed after the first
    assert res.restart_overhead_s == pytest.approx(30)


class _Oom(Policy):
    name = "oom"
    knowledge = "none"

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        lay = place(A100, ["2g.10gb"])
        if any(j.state == "waiting" for j in view.jobs.values()) and not view.gpus[0].jobs:
            if event.kind == "arrival":
                return [GpuTarget(0, "mig", lay, {"big": lay.slices[0]})]
            full = place(A100, ["7g.40gb"])
            return [GpuTarget(0, "mig", full, {"big": full.slices[0]})]
        return []


def test_job_that_does_not_fit_a_slice_fails_to_start_there() -> None:
    """Out of memory on start: back in the queue; the policy is asked again (a tick)."""
    trace = _trace(("big", 0, "toy_big", 10))
    res = simulate(trace, CAT, [A100], _Oom())
    (big,) = res.jobs
    assert big.oom == 1 and res.oom_starts == 1
    assert big.finish_s == pytest.approx(5 + 10)  # then on a 7g instance (5 s to set up)


class _Never(Policy):
    name = "never"
    knowledge = "none"

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        return []


def test_a_job_no_policy_places_fails_with_a_reason_and_the_others_finish() -> None:
    trace = _trace(("a", 0, "toy_a", 10), ("b", 5, "toy_a", 10))
    res = simulate(trace, CAT, [A100], _Never())
    assert [j.failed for j in res.jobs] == ["policy never found no GPU instance for it"] * 2
    assert res.summary()["mean_jct_s"] is None and res.summary()["unfinished"] == 2


def test_memory_need_sits_between_the_slices_that_fit_and_not() -> None:
    mem = memory_need_mb(CAT["toy_big"], A100)
    assert A100.by_slices(2).memory_mb < mem <= A100.by_slices(3).memory_mb
    assert memory_need_mb(CAT["toy_a"], A100) <= A100.by_slices(1).memory_mb


def test_paper_restart_costs_by_family() -> None:
    w = Workload("resnet_64", {7: 1.0}, {})
    assert restart_cost_for(w, "paper") == 9.0
    assert restart_cost_for(w, 12.5) == 12.5
    assert restart_cost_for(Workload("unknown_1", {7: 1.0}, {}), "paper") == 30.0


class _Profiler(Policy):
    name = "prof"
    knowledge = "profile"

    def __init__(self) -> None:
        self.seen: list[SlicePrediction | None] = []

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        if event.kind == "arrival" and event.job == "b":
            names = list(view.jobs)
            return [
                GpuTarget(
                    0,
                    "mps",
                    assignment={n: None for n in names},
                    mps_share={n: 100 for n in names},
                    profile_s=30,
                )
            ]
        if event.kind == "profiled":
            self.seen = [view.jobs[n].prediction for n in ("a", "b")]
            assert all(view.jobs[n].profiled for n in ("a", "b"))
            lay = place(A100, ["4g.20gb", "3g.20gb"])
            return [GpuTarget(0, "mig", lay, {"a": lay.slices[0], "b": lay.slices[1]})]
        if event.kind == "arrival":
            return [GpuTarget(0, "full", assignment={"a": None})]
        return []


def test_profiling_phase_feeds_the_predictor_and_reports_profiled() -> None:
    calls = []

    def predict(profile, mix, memory):
        calls.append((dict(profile), len(mix), memory))
        return SlicePrediction({7: 1.0, 4: 1.5}, source="model")

    mps = {100: 100.0, 50: 150.0, 14: 500.0}
    cat = Catalog(None, {"toy_a": Workload("toy_a", CAT["toy_a"].mig_ms, mps)})
    trace = _trace(("a", 0, "toy_a", 1000), ("b", 100, "toy_a", 1000))
    pol = _Profiler()
    res = simulate(trace, cat, [A100], pol, predict=predict, config=SimConfig(profile_noise=0.0))
    assert len(calls) == 2 and all(n == 1 for _, n, _ in calls)
    prof = calls[0][0]
    assert set(prof) == {100, 50, 14}
    assert prof[100] > prof[50] * 0.5  # measured with a co-runner: not faster than alone
    assert pol.seen[0] is not None and pol.seen[0].relative[4] == 1.5
    assert res.reconfigurations == 2  # whole GPU (as it starts) -> mps -> mig
    assert res.migrations == 3  # a into MPS; a and b out of it


def test_deterministic_for_a_seed(shared_data: Path) -> None:
    from miso_cli.policy.miso import Miso

    cat = load_catalog(shared_data / "a100-40gb" / "catalog.csv")
    trace = load_trace(shared_data / "a100-40gb" / "trace_dev.csv", cat)[:30]

    def predict(profile, mix, memory):
        ratio = profile[50] / profile[100]
        return SlicePrediction({7: 1.0, 4: ratio, 3: ratio * 1.1, 2: ratio * 1.6, 1: ratio * 2.5})

    runs = [
        simulate(trace, cat, [A100] * 2, Miso(), predict=predict, config=SimConfig(seed=s))
        for s in (3, 3, 4)
    ]
    assert runs[0].summary() == runs[1].summary()
    assert runs[0].summary()["mean_jct_s"] != runs[2].summary()["mean_jct_s"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "trace.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job,arrival_s,workload\n", "missing: duration_7g_s"),
        ("job,arrival_s,workload,duration_7g_s\na,x,toy_a,10\n", ":2: column arrival_s"),
        ("job,arrival_s,workload,duration_7g_s\na,0,toy_a,10\na,1,toy_a,5\n", ":3: job 'a'"),
        ("job,arrival_s,workload,duration_7g_s\na,0,nope,10\n", ":2: column workload"),
        ("job,arrival_s,workload,duration_7g_s\na,0,toy_a,0\n", "duration_7g_s: must be"),
        ("job,arrival_s,workload,duration_7g_s\na,-1,toy_a,3\n", "arrival_s: must be"),
        ("job,arrival_s,workload,duration_7g_s\n", "no jobs"),
    ],
)
def test_trace_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(BadInput, match=message):
        load_trace(path, CAT)


def test_unused_layout_type_is_frozen() -> None:
    # Layouts are values: the simulator compares them to count reconfigurations.
    assert Layout(()) == Layout(())


class _OnOne(Policy):
    """Put every job alone on one instance of ``profile``."""

    name = "on-one"
    knowledge = "none"

    def __init__(self, model, profile: str) -> None:
        self.lay = place(model, [profile])

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        waiting = [j.name for j in view.jobs.values() if j.state == "waiting"]
        if waiting and not view.gpus[0].jobs:
            return [GpuTarget(0, "mig", self.lay, {waiting[0]: self.lay.slices[0]})]
        return []


def test_fit_is_decided_by_the_instance_memory_not_the_a100_column() -> None:
    """toy_big missed the A100's 2g.10gb (its catalog cell is empty) but fits an H100's
    2g.20gb: simulated there, it runs, at a time extrapolated from its measured sizes."""
    h100 = MODELS["h100-80gb"]
    trace = _trace(("big", 0, "toy_big", 10))
    res = simulate(trace, CAT, [h100], _OnOne(h100, "2g.20gb"))
    big = res.jobs[0]
    assert big.finish_s is not None
    assert big.finish_s > 10 * 140 / 100  # slower than on the 3g it was measured on
    # The A100's 2g.10gb is too small: out of memory on start, then never placed.
    small = simulate(trace, CAT, [A100], _OnOne(A100, "2g.10gb"))
    assert small.oom_starts >= 1 and small.jobs[0].failed and small.jobs[0].finish_s is None
