"""The engine alone, on a virtual clock: facts in, actions out (no processes, no backend)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from miso_cli.engine import core
from miso_cli.engine.core import (
    Arrived,
    CollectProfile,
    Ended,
    EndLevel,
    Engine,
    EngineJob,
    Fail,
    Profiled,
    Reconfigure,
    Start,
    Stop,
)
from miso_cli.engine.rules import TargetError
from miso_cli.gpu.layouts import Layout, place
from miso_cli.gpu.profiles import MODELS
from miso_cli.policy.core import ClusterView, Event, GpuTarget, Policy, SlicePrediction

A100 = MODELS["a100-40gb"]
LAY = place(A100, ["4g.20gb", "3g.20gb"])
FOUR, THREE = LAY.slices[0], LAY.slices[1]


class Scripted(Policy):
    """Answers each event with what ``script`` returns; remembers what it was asked."""

    name = "scripted"
    reacts_to_progress = False

    def __init__(self, script: Callable[[Event, ClusterView], list[GpuTarget]]) -> None:
        self.script = script
        self.seen: list[tuple[str, str | None]] = []
        self.views: list[ClusterView] = []

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        self.seen.append((event.kind, event.job))
        self.views.append(view)
        return self.script(event, view)


def _engine(policy: Policy, *names: str, instant: bool = False, **kw: object) -> Engine:
    eng = Engine([A100], policy, instant_stops=instant, **kw)  # type: ignore[arg-type]
    for i, n in enumerate(names):
        eng.add_job(EngineJob(n, 0.0, i, total_steps=100.0, memory_mb=4096.0, restart_cost_s=7.0))
    return eng


def _of(actions: list[core.Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def _a_then_moved_for_b(ev: Event, view: ClusterView) -> list[GpuTarget]:
    """a takes the 3g; when b arrives, a moves to the 4g and b takes the 3g."""
    if ev.kind == "arrival" and ev.job == "a":
        return [GpuTarget(0, "mig", LAY, {"a": THREE})]
    if ev.kind == "arrival" and ev.job == "b":
        return [GpuTarget(0, "mig", LAY, {"a": FOUR, "b": THREE})]
    return []


def test_a_migration_drains_then_reconfigures_then_restarts_with_its_restart_cost() -> None:
    eng = _engine(Scripted(_a_then_moved_for_b), "a", "b")
    first = eng.step(0.0, [Arrived("a")])
    (start,) = _of(first, Start)
    assert (start.job, start.slice, start.pause_s, start.resume) == ("a", THREE, 0.0, False)
    eng.progress("a", 10.0)
    acts = eng.step(5.0, [Arrived("b")])
    # a is asked to checkpoint; nothing starts while it drains, the GPU shows busy.
    assert [(s.job, s.reason) for s in _of(acts, Stop)] == [("a", "migrate")]
    assert not _of(acts, Start) and not _of(acts, Reconfigure)
    view = eng.view()
    assert view.gpus[0].busy and view.jobs["a"].slice == FOUR  # shown where it goes
    acts = eng.step(6.0, [Ended("a", "stopped")])
    (reconf,) = _of(acts, Reconfigure)
    assert not reconf.changed  # the layout stays; both instances are kept
    starts = {s.job: s for s in _of(acts, Start)}
    assert starts["a"].slice == FOUR and starts["a"].pause_s == 7.0 and starts["a"].resume
    assert starts["b"].slice == THREE and starts["b"].pause_s == 0.0
    assert eng.migrations == 1 and eng.reconfigurations == 1 and eng.restart_overhead_s == 7.0


def test_a_wrong_target_raises_before_any_job_is_asked_to_stop() -> None:
    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        if ev.job == "a":
            return [GpuTarget(0, "mig", LAY, {"a": THREE})]
        return [GpuTarget(0, "mig", Layout((FOUR,)), {"a": FOUR, "b": THREE})]

    eng = _engine(Scripted(script), "a", "b")
    eng.step(0.0, [Arrived("a")])
    with pytest.raises(TargetError, match="assigned to no instance"):
        eng.step(1.0, [Arrived("b")])
    assert eng.jobs["a"].state == "running" and eng.jobs["a"].slice == THREE


def test_events_of_one_instant_go_finishes_first_then_arrivals_in_queue_order() -> None:
    pol = Scripted(lambda ev, view: [])
    eng = _engine(pol, "z", "a", "b")
    eng.jobs["z"].state, eng.jobs["z"].gpu = "running", 0
    eng.gpus[0].jobs["z"] = None
    eng.step(3.0, [Arrived("b"), Arrived("a"), Ended("z", "finished")])
    assert pol.seen[:3] == [("finish", "z"), ("arrival", "b"), ("arrival", "a")]
    assert [j.name for j in pol.views[-1].queue()] == ["a", "b"]  # file order (seq)


def test_profiling_runs_smallest_share_first_each_level_a_restart_then_profiled() -> None:
    calls = []

    def predict(profile: dict, mix: list, memory: float | None) -> SlicePrediction:
        calls.append((dict(profile), len(mix)))
        return SlicePrediction({7: 1.0, 4: 1.5})

    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        if ev.kind == "arrival" and ev.job == "b":
            both = {"a": None, "b": None}
            return [GpuTarget(0, "mps", assignment=both, mps_share={}, profile_s=30.0)]
        return []

    pol = Scripted(script)
    eng = _engine(pol, "a", "b", instant=True, predict=predict)
    acts = eng.step(0.0, [Arrived("a"), Arrived("b")])
    assert [(s.job, s.level, s.pause_s) for s in _of(acts, Start)] == [("a", 14, 0), ("b", 14, 0)]
    assert eng.next_due() == pytest.approx(10.0)  # 30 s over three levels
    levels = [14]
    t = 10.0
    for level in (50, 100):
        acts = eng.due(t)
        assert [e.level for e in _of(acts, EndLevel)] == [levels[-1]]
        assert {(s.job, s.reason) for s in _of(acts, Stop)} == {("a", "level"), ("b", "level")}
        starts = _of(acts, Start)
        assert {s.level for s in starts} == {level} and all(s.pause_s == 7.0 for s in starts)
        levels.append(level)
        t += 10.0
        eng.step(t - 10.0)
    acts = eng.due(30.0)
    (collect,) = _of(acts, CollectProfile)
    assert not _of(acts, Stop)  # the jobs stay at 100 %, the share they keep
    measured = {n: {14: 500.0, 50: 200.0, 100: 120.0} for n in collect.jobs}
    eng.step(30.0, [Profiled(0, measured)])
    assert pol.seen[-1] == ("profiled", None)
    assert eng.jobs["a"].profiled and eng.jobs["a"].prediction is not None
    assert eng.jobs["a"].step_time_7g_s == pytest.approx(0.12)
    assert len(calls) == 2 and all(n == 1 for _, n in calls)
    assert eng.jobs["a"].restarts == 2 and eng.restart_overhead_s == 4 * 7.0


def test_out_of_memory_on_start_requeues_and_asks_the_policy_again() -> None:
    small = place(A100, ["1g.5gb"])

    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        if ev.kind == "arrival":
            return [GpuTarget(0, "mig", small, {"big": small.slices[0]})]
        if view.jobs["big"].state == "waiting":
            return [GpuTarget(0, "full", assignment={"big": None})]
        return []

    pol = Scripted(script)
    eng = Engine([A100], pol)
    eng.add_job(EngineJob("big", 0.0, 0, total_steps=10.0, memory_mb=20_000.0))
    acts = eng.step(0.0, [Arrived("big")])
    assert [n.kind for n in _of(acts, core.Note)].count("oom") == 1
    assert pol.seen == [("arrival", "big"), ("tick", None)]
    (start,) = _of(acts, Start)
    assert start.slice is None and eng.gpus[0].mode == "full"
    assert eng.oom_starts == 1 and eng.jobs["big"].oom == 1


def test_a_job_that_fits_nowhere_fails_with_a_reason_once_nothing_runs() -> None:
    pol = Scripted(lambda ev, view: [])
    eng = _engine(pol, "a")
    acts = eng.step(0.0, [Arrived("a")])
    (fail,) = _of(acts, Fail)
    assert fail.reason == "policy scripted found no GPU instance for it"
    assert eng.jobs["a"].state == "failed" and pol.seen[-1] == ("tick", None)


def test_summary_counts_jct_makespan_and_a_shared_gpu_once() -> None:
    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        if ev.kind == "arrival" and ev.job == "b":
            return [GpuTarget(0, "mps", assignment={"a": None, "b": None})]
        return []

    eng = _engine(Scripted(script), "a", "b", instant=True)
    eng.step(0.0, [Arrived("a"), Arrived("b")])
    eng.step(10.0, [Ended("a", "finished")])
    eng.step(20.0, [Ended("b", "finished")])
    s = eng.summary()
    assert s["mean_jct_s"] == pytest.approx(15.0) and s["makespan_s"] == pytest.approx(20.0)
    assert s["slice_utilisation"] == pytest.approx(1.0)  # one GPU, shared, busy throughout
    assert s["reconfigurations"] == 1 and s["migrations"] == 0


def test_under_miso_run_a_level_lasts_until_measured_at_most_six_times_its_length() -> None:
    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        if ev.kind == "arrival":
            return [GpuTarget(0, "mps", assignment={"a": None}, profile_s=30.0)]
        return []

    eng = _engine(Scripted(script), "a", wait_for_measurement=True)
    eng.step(0.0, [Arrived("a")])
    assert eng.next_due() == pytest.approx(60.0)  # 10 s, six times, unless measured sooner
    assert not _of(eng.due(10.0), EndLevel)
    eng.level_ready(0)
    (end,) = _of(eng.due(10.0), EndLevel)
    assert end.level == 14
    acts = eng.step(10.5, [Ended("a", "stopped")])  # the job checkpointed for the next level
    (start,) = _of(acts, Start)
    assert start.level == 50 and eng.next_due() == pytest.approx(10.5 + 60.0)


def test_a_target_that_changes_nothing_is_no_decision() -> None:
    def script(ev: Event, view: ClusterView) -> list[GpuTarget]:
        return [GpuTarget(0, "mig", LAY, {"a": THREE})] if ev.job in ("a", "b") else []

    pol = Scripted(script)
    eng = _engine(pol, "a", "b", instant=True)
    eng.step(0.0, [Arrived("a")])
    acts = eng.step(1.0, [Arrived("b")])  # the same target again: a keeps running
    assert not _of(acts, Stop) and not _of(acts, Start) and not _of(acts, Reconfigure)
    assert eng.decisions == 1 and eng.reconfigurations == 1


def test_the_view_says_when_a_job_took_its_instance() -> None:
    """A policy keeping a job on its instance for a while (miso+'s ``min_residence_s``)
    needs to know since when: the engine's time of the job's last start there."""

    eng = _engine(Scripted(_a_then_moved_for_b), "a", "b")
    eng.step(2.0, [Arrived("a")])
    assert eng.view().jobs["a"].placed_s == 2.0
    eng.step(5.0, [Arrived("b")])
    eng.step(6.0, [Ended("a", "stopped")])  # drained, moved to 4g: placed anew
    view = eng.view()
    assert view.jobs["a"].placed_s == 6.0 and view.jobs["b"].placed_s == 6.0
