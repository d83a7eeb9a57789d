"""miso+: remaining times from measured progress, how jobs are weighed, when a job moves."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from miso_cli.engine.measure import Look, ProgressMeter
from miso_cli.gpu.layouts import place
from miso_cli.gpu.profiles import MODELS
from miso_cli.planning.planner import PlanGpu, plan
from miso_cli.policy.core import ClusterView, Event, GpuView, JobView, SlicePrediction
from miso_cli.policy.miso import MisoPlus

A100 = MODELS["a100-40gb"]
REL = {7: 1.0, 4: 1.3, 3: 1.45, 2: 2.2, 1: 4.0}
PRED = SlicePrediction(dict(REL), {g: 0.0 for g in REL})


def _view(now: float, gpus: list[GpuView], jobs: list[JobView]) -> ClusterView:
    return ClusterView(now, gpus, {j.name: j for j in jobs})


def _running(name: str, gpu: int, sl, **kw) -> JobView:
    base = {"state": "running", "gpu": gpu, "slice": sl, "prediction": PRED, "profiled": True}
    return JobView(name, 0.0, **{**base, **kw})


def test_measured_progress_gives_remaining_time_without_the_restore() -> None:
    """Seconds per step are measured from the first look that finds the job progressing."""
    pol = MisoPlus(weight_power=1.0, critical=0.0)  # weight 1: the plan sees remaining time
    meter = ProgressMeter()
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    three = next(s for s in lay.slices if s.slices == 3)
    gpu = GpuView(0, A100, "mig", lay, {"a": three})
    # Not profiled: no step time known. Placed at t=0, restoring until t=30, then
    # 1 step/s on its 3g instance.
    looks = [(0.0, 0.0), (20.0, 0.0), (40.0, 10.0), (100.0, 70.0)]
    for now, done in looks:
        meter.look(now, [Look("a", "running", 0, three, done)])
    a = _running(
        "a",
        0,
        three,
        profiled=False,
        total_steps=10_000,
        done_steps=70.0,
        measured_step_s=meter.of("a"),
    )
    view = _view(100.0, [gpu], [a])
    (job,) = pol.plan_jobs(view, view.gpus)
    # 1.0 s/step on 3g is 1.0 / 1.45 s/step on 7g; counting from placement would say
    # 100 s / 70 steps instead.
    assert job.remaining_s == pytest.approx((10_000 - 70) * 1.0 / REL[3])
    # A job that moves is measured afresh on its new instance; until then its 3g
    # measurement still stands.
    four = next(s for s in lay.slices if s.slices == 4)
    meter.look(110.0, [Look("a", "running", 0, four, 70.0)])
    moved = _running(
        "a",
        0,
        four,
        profiled=False,
        total_steps=10_000,
        done_steps=70.0,
        measured_step_s=meter.of("a"),
    )
    view = _view(110.0, [GpuView(0, A100, "mig", lay, {"a": four})], [moved])
    (job,) = pol.plan_jobs(view, view.gpus)
    assert job.remaining_s == pytest.approx((10_000 - 70) * 1.0 / REL[3])
    # What was measured survives a journal round trip (miso run --resume keeps it).
    again = ProgressMeter.from_json(json.loads(json.dumps(meter.to_json())))
    assert again.of("a") == meter.of("a") and again.anchors == meter.anchors
    # A finished job is forgotten.
    meter.look(120.0, [Look("a", "finished", None, None, 10_000)])
    assert meter.of("a") == {}


def test_miso_plus_is_pure_same_view_same_targets() -> None:
    """No state between calls: deciding twice on one view gives the same targets."""
    pol = MisoPlus()
    jobs = [JobView(n, 0.0, seq=i, memory_mb=4096.0) for i, n in enumerate("abc")]
    view = _view(0.0, [GpuView(0, A100)], jobs)
    first = pol.decide(Event("arrival", job="a"), view)
    assert first and pol.decide(Event("tick"), view) == first
    assert pol.decide(Event("resume"), view) == first
    assert vars(pol) == vars(MisoPlus())  # nothing learnt inside the policy


def test_jobs_are_weighed_alike_except_the_one_that_sets_the_makespan() -> None:
    pol = MisoPlus()
    gpus = [GpuView(i, A100) for i in range(8)]
    # Remaining on a whole GPU: 100 s each for the short ones, 6000 s for the long one.
    jobs = [
        JobView(f"s{i}", i, prediction=PRED, profiled=True, total_steps=100, step_time_7g_s=1.0)
        for i in range(3)
    ]
    jobs.append(
        JobView("long", 5, prediction=PRED, profiled=True, total_steps=6000, step_time_7g_s=1.0)
    )
    view = _view(0.0, gpus, jobs)
    planned = {j.name: j for j in pol.plan_jobs(view, gpus)}
    # Short jobs count alike whatever their length (mean slowdown) ...
    assert {planned[f"s{i}"].remaining_s for i in range(3)} == {pol.default_remaining_s}
    # ... the one whose remaining time is 3 x the backlog per GPU or more by its length.
    assert planned["long"].remaining_s == pytest.approx(6000.0)
    # On one GPU with 4g+3g, the long job takes the 4g, although it came last.
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    result = plan(
        [PlanGpu(0, A100, lay, candidates=[lay])],
        [planned["s0"], planned["long"]],
        objective="jct",
        fifo=False,
    )
    assert result.gpus[0].assignment["long"].slices == 4
    # Without the makespan rule, the first come wins the tie.
    plain = MisoPlus(critical=0.0)
    planned = {j.name: j for j in plain.plan_jobs(view, gpus)}
    assert planned["long"].remaining_s == pytest.approx(pol.default_remaining_s)


@pytest.mark.parametrize(("remaining_s", "moves"), [(100.0, False), (1000.0, True)])
def test_a_running_job_moves_only_when_it_saves_twice_its_restart_cost(
    remaining_s: float, moves: bool
) -> None:
    """Alone on a GPU, a 3g job would run 1.45x faster on 7g; a move costs 30 s."""
    pol = MisoPlus()
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    three = next(s for s in lay.slices if s.slices == 3)
    gpu = GpuView(0, A100, "mig", lay, {"a": three})
    a = _running("a", 0, three, total_steps=remaining_s, step_time_7g_s=1.0, restart_cost_s=30.0)
    targets = pol.decide(Event("finish", "b", 0), _view(0.0, [gpu], [a]))
    if not moves:
        # 100 s x (1.45 - 1) = 45 s saved: more than the restart, less than twice it.
        assert targets == []
    else:
        (t,) = targets
        assert t.assignment["a"].slices > 3


def test_no_back_and_forth_when_nothing_changes() -> None:
    """After a move, the same facts plan no further move (no ping-pong)."""
    pol = MisoPlus()
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    three = next(s for s in lay.slices if s.slices == 3)
    a = _running("a", 0, three, total_steps=1000, step_time_7g_s=1.0)
    (t,) = pol.decide(
        Event("finish", "b", 0), _view(0.0, [GpuView(0, A100, "mig", lay, {"a": three})], [a])
    )
    new = t.assignment["a"]
    after = GpuView(0, A100, "mig", t.layout, {"a": new})
    for now, done in ((40.0, 0.0), (60.0, 20.0), (120.0, 80.0)):
        a = _running("a", 0, new, total_steps=1000, step_time_7g_s=1.0, done_steps=done)
        assert pol.decide(Event("arrival", "x"), _view(now, [after], [a])) == []


def test_short_jobs_run_one_after_the_other_when_that_finishes_them_sooner() -> None:
    """Four short jobs, speeds known: splitting the GPU four ways would finish every job
    late; one after the other on the whole GPU gives the lower mean completion time."""
    linear = SlicePrediction({7: 1.0, 4: 7 / 4, 3: 7 / 3, 2: 3.5, 1: 7.0}, {})
    jobs = [
        JobView(
            n,
            0.0,
            seq=i,
            prediction=linear,
            profiled=True,
            total_steps=100,
            step_time_7g_s=0.2,
            memory_mb=2048.0,
        )
        for i, n in enumerate("abcd")
    ]
    view = _view(0.0, [GpuView(0, A100)], jobs)
    (t,) = MisoPlus(hold_back=True).decide(Event("arrival", job="a"), view)
    assert list(t.assignment) == ["a"] and t.layout.name == "7g.40gb"
    (split,) = MisoPlus().decide(Event("arrival", job="a"), view)  # off by default
    assert len(split.assignment) == 4


def _move_case(*, gpu: int = 0, now: float = 0.0, others: list[JobView] | None = None):
    """A job alone on a 3g instance of GPU ``gpu`` (of two), 1,000 s left: 7g would save
    about 450 s, a move costs 30 s (charged 60 s)."""
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    three = next(s for s in lay.slices if s.slices == 3)
    gpus = [GpuView(i, A100, "mig", lay, {"a": three} if i == gpu else {}) for i in range(2)]
    a = _running("a", gpu, three, total_steps=1000, step_time_7g_s=1.0, restart_cost_s=30.0)
    return gpus, [a, *(others or [])]


def test_a_move_gains_only_over_the_horizon_between_arrivals() -> None:
    """16 jobs arrived over the last 80 s on 2 GPUs: a plan lasts about 10 s on a GPU, too
    short for a 30 s restart to pay back; with arrivals far apart the same move is made."""
    pol = MisoPlus(horizon=True)
    crowd = [
        JobView(f"w{i}", 1000.0 - 5.0 * i, memory_mb=60_000.0, seq=i + 1) for i in range(16)
    ]  # waiting, too large for any instance: they only tell the arrival rate
    gpus, jobs = _move_case(now=1000.0, others=crowd)
    view = _view(1000.0, gpus, jobs)
    assert pol.horizon_s(view) == pytest.approx(75.0 * 2 / 16)
    assert pol.decide(Event("finish", "b", 0), view) == []
    sparse = [JobView(f"w{i}", 1000.0 - 500.0 * i, memory_mb=60_000.0, seq=i + 1) for i in range(2)]
    gpus, jobs = _move_case(now=1000.0, others=sparse)
    (t,) = pol.decide(Event("finish", "b", 0), _view(1000.0, gpus, jobs))
    assert t.assignment["a"].slices > 3
    # Without the horizon the plan counts the whole remaining run: it moves.
    gpus, jobs = _move_case(now=1000.0, others=crowd)
    (t,) = MisoPlus(horizon=False).decide(Event("finish", "b", 0), _view(1000.0, gpus, jobs))
    assert t.assignment["a"].slices > 3


@pytest.mark.parametrize(("event_gpu", "moves"), [(0, True), (1, False), (None, False)])
def test_a_gpu_no_event_touched_is_re_planned_only_for_a_larger_gain(
    event_gpu: int | None, moves: bool
) -> None:
    """The move saves about 7.5 x its restart cost (in the planner's units): made when the
    event concerns the job's GPU, not when it concerns another GPU or none (an arrival),
    where a move must save ``local_factor`` times more."""
    pol = MisoPlus(horizon=False, local_factor=10.0)
    gpus, jobs = _move_case(gpu=0)
    kind = "finish" if event_gpu is not None else "arrival"
    targets = pol.decide(Event(kind, "b", event_gpu), _view(0.0, gpus, jobs))
    assert bool(targets) == moves
    # Charged alike everywhere (the whole-cluster plan of before): it moves.
    wide = MisoPlus(horizon=False, local_factor=1.0)
    assert wide.decide(Event(kind, "b", event_gpu), _view(0.0, gpus, jobs))


def test_a_job_placed_less_than_the_minimum_residence_ago_stays() -> None:
    """Hysteresis, when the driver says when a job took its instance (``placed_s``)."""
    pol = MisoPlus(horizon=False, min_residence_s=120.0)
    for placed, moves in ((950.0, False), (800.0, True), (None, True)):
        gpus, jobs = _move_case()
        if placed is not None:
            jobs[0].placed_s = placed  # type: ignore[attr-defined]
        targets = pol.decide(Event("finish", "b", 0), _view(1000.0, gpus, jobs))
        assert bool(targets) == moves, placed


@pytest.mark.parametrize(("a_left", "squeezed"), [(20.0, False), (5000.0, True)])
def test_a_newcomer_squeezes_running_jobs_only_when_that_beats_its_wait(
    a_left: float, squeezed: bool
) -> None:
    """Starting ``c`` on a GPU that ``a`` has whole forces ``a`` onto a smaller instance
    (a restart, then a slower run): worth it when ``a`` has long to run, not when it
    frees the GPU in 20 s. Without pricing the wait, ``c`` always starts at once."""
    full = place(A100, ["7g.40gb"])
    a = _running(
        "a", 0, full.slices[0], total_steps=a_left, step_time_7g_s=1.0, restart_cost_s=30.0
    )
    c = JobView("c", 0.0, prediction=PRED, profiled=True, total_steps=600, step_time_7g_s=1.0)
    view = _view(0.0, [GpuView(0, A100, "mig", full, {"a": full.slices[0]})], [a, c])
    targets = MisoPlus().decide(Event("arrival", "c"), view)
    assert bool(targets) == squeezed
    if squeezed:
        (t,) = targets
        assert t.assignment["a"].slices < 7 and "c" in t.assignment
    (t,) = MisoPlus(price=False).decide(Event("arrival", "c"), view)
    assert "c" in t.assignment


def test_remaining_time_does_not_change_with_the_instance_a_job_is_on() -> None:
    """Measured on 7g and 3g (3g slower than predicted): the remaining time is read from
    the largest instance measured, wherever the job runs now, so a move does not change
    the estimate (and with it the next plan). Calibrated, the plan sees the measured 3g."""
    lay = place(A100, ["4g.20gb", "3g.20gb"])
    full = place(A100, ["7g.40gb"])
    three = next(s for s in lay.slices if s.slices == 3)
    seen = {7: 1.0, 3: 2.0}  # s/step: 3g is 2x slower, the prediction said 1.45x
    got = []
    for gpu in (
        GpuView(0, A100, "mig", lay, {"a": three}),
        GpuView(0, A100, "mig", full, {"a": full.slices[0]}),
    ):
        a = _running("a", 0, gpu.jobs["a"], total_steps=1000, measured_step_s=dict(seen))
        (job,) = MisoPlus(weight_power=1.0, critical=0.0).plan_jobs(_view(0.0, [gpu], [a]), [gpu])
        got.append(job.remaining_s)
        (cal,) = MisoPlus(weight_power=1.0, critical=0.0, calibrate=True).plan_jobs(
            _view(0.0, [gpu], [a]), [gpu]
        )
        assert cal.relative[3] == pytest.approx(2.0) and cal.relative[4] == REL[4]
    assert got[0] == got[1] == pytest.approx(1000.0)


def _full_cluster(n_gpus: int, left: float, waiting: int, seq0: int = 1):
    """``n_gpus`` GPUs, each running one job on its whole GPU (7g) with ``left`` steps of
    1 s to go, and ``waiting`` newcomers (speeds known, 600 s each) in the queue."""
    full = place(A100, ["7g.40gb"])
    gpus, jobs = [], []
    for i in range(n_gpus):
        name = f"r{i}"
        gpus.append(GpuView(i, A100, "mig", full, {name: full.slices[0]}))
        jobs.append(
            _running(name, i, full.slices[0], total_steps=left, step_time_7g_s=1.0, seq=-1 - i)
        )
    for k in range(waiting):
        jobs.append(
            JobView(
                f"w{k}",
                float(k),
                seq=seq0 + k,
                prediction=PRED,
                profiled=True,
                total_steps=600,
                step_time_7g_s=1.0,
            )
        )
    return gpus, jobs


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], list[str]]]:
    """Record the GPUs and jobs of every plan miso+ asks the planner for."""
    import miso_cli.policy.miso as miso_module

    calls: list[tuple[list[int], list[str]]] = []
    real = miso_module.plan

    def recording(gpus, jobs, **kw):
        calls.append(([g.index for g in gpus], [j.name for j in jobs]))
        return real(gpus, jobs, **kw)

    monkeypatch.setattr(miso_module, "plan", recording)
    return calls


@pytest.mark.parametrize("n_gpus", [16, 64])
def test_a_finish_on_one_gpu_of_many_plans_a_bounded_part_of_the_cluster(
    monkeypatch: pytest.MonkeyPatch, n_gpus: int
) -> None:
    """A job finished on GPU 3: the plan covers GPU 3 and the GPUs with room (GPU 9 has a
    free instance), not the other full GPUs, and the head of the queue, whatever the
    cluster's size."""
    calls = _recording(monkeypatch)
    gpus, jobs = _full_cluster(n_gpus, left=5000.0, waiting=100, seq0=1)
    gpus[3] = GpuView(3, A100, "mig", gpus[3].layout, {})  # r3 finished
    jobs = [j for j in jobs if j.name != "r3"]
    split = place(A100, ["4g.20gb", "3g.20gb"])
    four = next(s for s in split.slices if s.slices == 4)
    gpus[9] = GpuView(9, A100, "mig", split, {"r9": four})  # its 3g is free
    jobs = [replace(j, slice=four) if j.name == "r9" else j for j in jobs]
    pol = MisoPlus()
    view = _view(1000.0, gpus, jobs)
    # r3 has left the view: no sweep turn (see the next test), no whole-cluster plan.
    assert not pol.wide_plan(Event("finish", "r3", 3), view)
    assert pol.sweep_block(Event("finish", "r3", 3), view) == []
    targets = pol.decide(Event("finish", "r3", 3), view)
    ((planned_gpus, planned_jobs),) = calls
    assert planned_gpus == [3, 9]
    assert {n for n in planned_jobs if n.startswith("r")} == {"r9"}
    waiting = [n for n in planned_jobs if n.startswith("w")]
    assert waiting == [f"w{k}" for k in range(len(waiting))]  # the head, in order
    assert len(waiting) <= max(pol.queue_bound(view, [gpus[3], gpus[9]]), 32) < 100
    assert targets and {t.gpu for t in targets} <= {3, 9}
    assert "w0" in {n for t in targets for n in t.assignment}


@pytest.mark.parametrize(("left", "squeezed"), [(20.0, False), (5000.0, True)])
def test_a_wider_plan_still_squeezes_a_newcomer_in_when_that_pays(
    monkeypatch: pytest.MonkeyPatch, left: float, squeezed: bool
) -> None:
    """64 full GPUs, each job on its whole GPU: a newcomer's arrival touches no GPU and no
    GPU has room, so a local plan has nothing to plan. On a sweep turn (the arrival of
    every ``sweep_every``-th job) a block of 8 GPUs is planned, the blocks in turn, and a
    job there is squeezed onto a smaller instance for the newcomer when that beats the
    newcomer's wait (its GPU busy for 5,000 s more), not when it frees its GPU in 20 s.
    With ``wide_factor``, every (wide_factor x 64 / 8)-th job plans the whole cluster."""
    calls = _recording(monkeypatch)
    pol = MisoPlus()
    every = pol.sweep_every
    assert every and every > 1
    for seq, block in ((every + 1, None), (3 * every, 3), (9 * every, 1)):
        calls.clear()
        gpus, jobs = _full_cluster(64, left=left, waiting=1, seq0=seq)
        view = _view(0.0, gpus, jobs)
        event = Event("arrival", "w0")
        assert not pol.wide_plan(event, view)
        targets = pol.decide(event, view)
        if block is None:
            assert calls == [] and targets == []
            continue
        ((planned_gpus, _),) = calls
        assert planned_gpus == list(range(8 * block, 8 * block + 8))
        assert bool(targets) == squeezed
        if squeezed:
            (t,) = targets
            assert "w0" in t.assignment and len(t.assignment) == 2
    wide = MisoPlus(wide_factor=1.0)  # every 8th job
    for seq, whole in ((8 * 5, True), (8 * 5 + 1, False)):
        calls.clear()
        gpus, jobs = _full_cluster(64, left=left, waiting=1, seq0=seq)
        view = _view(0.0, gpus, jobs)
        assert wide.wide_plan(Event("arrival", "w0"), view) == whole
        if whole:
            targets = wide.decide(Event("arrival", "w0"), view)
            assert [g for g, _ in calls] == [list(range(64))]
            assert bool(targets) == squeezed
    # A resumed run is planned whole; a cluster within the bound always is.
    gpus, jobs = _full_cluster(64, left=left, waiting=1, seq0=33)
    assert pol.wide_plan(Event("resume"), _view(0.0, gpus, jobs))
    gpus, jobs = _full_cluster(8, left=left, waiting=1, seq0=33)
    assert pol.wide_plan(Event("arrival", "w0"), _view(0.0, gpus, jobs))
    assert MisoPlus(local_gpus=None).wide_plan(Event("tick"), _view(0.0, gpus, jobs))
