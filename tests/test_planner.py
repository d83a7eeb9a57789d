"""The planner against brute force on small cases, and its contract on large ones."""

from __future__ import annotations

import itertools
import random

import pytest

from miso_cli.gpu.layouts import Layout, enumerate_layouts
from miso_cli.gpu.profiles import MODELS
from miso_cli.planning.planner import PlanError, PlanGpu, PlanJob, job_cost, plan, plan_gpu

A100 = MODELS["a100-40gb"]
LAYOUTS = enumerate_layouts(A100)


def _job(rng: random.Random, name: str, running: tuple[int, Layout] | None = None) -> PlanJob:
    r4 = rng.uniform(1.0, 1.9)
    r3 = r4 * rng.uniform(1.0, 1.25)
    r2 = r3 * rng.uniform(1.1, 1.9)
    r1 = r2 * rng.uniform(1.2, 2.1)
    rel = {7: 1.0, 4: r4, 3: r3, 2: r2, 1: r1}
    memory = rng.choice([None, None, 4000.0, 9000.0, 15000.0, 30000.0])
    job = PlanJob(
        name,
        rel,
        {g: 0.1 * v for g, v in rel.items()},
        memory_mb=memory,
        remaining_s=rng.uniform(50, 3000),
        restart_cost_s=rng.choice([5.0, 30.0, 200.0]),
    )
    if running is not None:
        gpu, layout = running
        options = [s for s in layout.slices if job.fits(A100, s.slices)]
        if options:
            job.gpu, job.slice, job.waiting = gpu, rng.choice(options), False
    return job


def _brute(
    gpus: list[PlanGpu], jobs: list[PlanJob], objective: str, fifo: bool, risk: float
) -> tuple[int, float]:
    """(jobs placed, total cost) of the best plan, by trying every layout and assignment."""
    cands = []
    for g in gpus:
        c = list(LAYOUTS)
        if g.layout.slices and g.layout not in c:
            c.append(g.layout)
        cands.append(c)
    best: tuple[int, float] | None = None
    for combo in itertools.product(*cands):
        slots = [(g.index, s) for g, lay in zip(gpus, combo, strict=True) for s in lay.slices]
        # Each job: wait (None) or one slot.
        choices = []
        for j in jobs:
            opts: list[object] = []
            running = j.gpu is not None and j.slice is not None
            if not running:
                opts.append(None)
            for gi, s in slots:
                if j.fits(A100, s.slices):
                    opts.append((gi, s))
            choices.append(opts)
        for pick in itertools.product(*choices):
            used = [p for p in pick if p is not None]
            if len(set(used)) != len(used):
                continue
            if fifo:
                flags = [p is not None for j, p in zip(jobs, pick, strict=True) if j.waiting]
                if any(b and not a for a, b in itertools.pairwise(flags)):
                    continue
            total = 0.0
            for j, p in zip(jobs, pick, strict=True):
                if p is None:
                    continue
                moved = j.gpu is not None and (j.gpu, j.slice) != p
                total += job_cost(j, p[1].slices, moved, objective, risk)
            score = (len(used), total)
            if best is None or (score[0], -score[1]) > (best[0], -best[1]):
                best = score
    assert best is not None
    return best


def _score(p, jobs: list[PlanJob], objective: str, risk: float) -> tuple[int, float]:
    placed = p.placement()
    total = 0.0
    for j in jobs:
        if j.name in placed:
            moved = j.gpu is not None and (j.gpu, j.slice) != placed[j.name]
            total += job_cost(j, placed[j.name][1].slices, moved, objective, risk)
    return len(placed), total


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("objective", ["miso", "throughput", "jct"])
def test_matches_brute_force_on_one_gpu(seed: int, objective: str) -> None:
    rng = random.Random(seed)
    current = rng.choice(LAYOUTS)
    gpus = [PlanGpu(0, A100, current)]
    n_running = rng.randint(0, 2)
    jobs = [_job(rng, f"r{i}", (0, current)) for i in range(n_running)]
    jobs += [_job(rng, f"w{i}") for i in range(rng.randint(1, 3))]
    fifo = bool(seed % 2)
    risk = 0.5 if seed % 3 == 0 else 0.0
    got = plan(gpus, jobs, objective=objective, fifo=fifo, risk=risk)
    n, total = _score(got, jobs, objective, risk)
    bn, btotal = _brute(gpus, jobs, objective, fifo, risk)
    assert n == bn
    assert total == pytest.approx(btotal, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_two_gpus(seed: int) -> None:
    rng = random.Random(100 + seed)
    layouts = [rng.choice(LAYOUTS), rng.choice(LAYOUTS)]
    gpus = [PlanGpu(i, A100, layouts[i]) for i in range(2)]
    jobs = [_job(rng, "r0", (0, layouts[0])), _job(rng, "w0"), _job(rng, "w1")]
    got = plan(gpus, jobs, objective="jct", fifo=False)
    assert _score(got, jobs, "jct", 0.0) == pytest.approx(_brute(gpus, jobs, "jct", False, 0.0))


def test_plan_is_consistent_and_respects_memory() -> None:
    rng = random.Random(7)
    gpus = [PlanGpu(i, A100) for i in range(8)]
    jobs = [_job(rng, f"j{i}") for i in range(56)]
    got = plan(gpus, jobs, objective="jct", fifo=False)
    placed = got.placement()
    assert set(placed) | set(got.waiting) == {j.name for j in jobs}
    assert not set(placed) & set(got.waiting)
    by_name = {j.name: j for j in jobs}
    for g in got.gpus:
        assert g.layout in LAYOUTS
        slices = list(g.assignment.values())
        assert len(set(slices)) == len(slices)
        for name, sl in g.assignment.items():
            assert sl in g.layout.slices
            assert by_name[name].fits(A100, sl.slices)


def test_fifo_places_a_prefix_and_backfilling_may_pass() -> None:
    # The head needs a whole GPU's memory; GPU 0 runs a pinned job on its 4g.
    big = PlanJob("big", {7: 1.0}, memory_mb=30000)
    small = PlanJob("small", {7: 1.0, 4: 1.2, 3: 1.3, 2: 1.8, 1: 3.0}, memory_mb=1000)
    lay = next(lay for lay in LAYOUTS if lay.name == "4g.20gb+3g.20gb")
    four = next(s for s in lay.slices if s.slices == 4)
    rel = {7: 1.0, 4: 1.1, 3: 1.2, 2: 1.5, 1: 2.0}
    runner = PlanJob("runner", rel, gpu=0, slice=four, pinned=True, waiting=False)
    gpus = [PlanGpu(0, A100, lay)]
    assert plan(gpus, [runner, big, small], fifo=True).waiting == ["big", "small"]
    loose = plan(gpus, [runner, big, small], fifo=False)
    assert loose.waiting == ["big"]
    assert loose.gpus[0].assignment["small"].slices == 3
    gpus = [PlanGpu(0, A100, lay), PlanGpu(1, A100, Layout(()))]
    both = plan(gpus, [runner, big, small], fifo=True)
    assert both.gpus[1].assignment == {"big": LAYOUTS[0].slices[0]}
    assert both.waiting == []


def test_keeps_running_jobs_where_moving_is_not_worth_it() -> None:
    lay = next(lay for lay in LAYOUTS if lay.name == "3g.20gb+2g.10gb+2g.10gb")
    three = next(s for s in lay.slices if s.slices == 3)
    job = PlanJob(
        "a",
        {7: 1.0, 4: 1.05, 3: 1.1, 2: 1.6, 1: 2.5},
        remaining_s=100.0,
        restart_cost_s=30.0,
        gpu=0,
        slice=three,
        waiting=False,
    )
    got = plan([PlanGpu(0, A100, lay)], [job], objective="jct")
    # 7g would save 10 s of run time but the move costs 30 s.
    assert got.gpus[0].assignment == {"a": three}
    assert got.gpus[0].layout == lay  # partial reconfiguration: nothing changes
    assert got.moved == []
    job.remaining_s = 10_000.0
    got = plan([PlanGpu(0, A100, lay)], [job], objective="jct")
    assert got.gpus[0].layout.name == "7g.40gb"
    assert got.moved == ["a"]


def test_considers_4g_plus_3g() -> None:
    a = PlanJob("a", {7: 1.0, 4: 1.1, 3: 1.5, 2: 2.5, 1: 4.0})
    b = PlanJob("b", {7: 1.0, 4: 1.1, 3: 1.15, 2: 2.5, 1: 4.0})
    got = plan([PlanGpu(0, A100)], [a, b], objective="miso")
    assert got.gpus[0].layout.name == "4g.20gb+3g.20gb"
    assert got.gpus[0].assignment["a"].slices == 4


def test_uncertainty_steers_away_from_unknown_slices() -> None:
    a = PlanJob("a", {7: 1.0, 4: 1.3, 3: 1.35}, {7: 0.0, 4: 0.0, 3: 0.0})
    b = PlanJob("b", {7: 1.0, 4: 1.3, 3: 1.3}, {7: 0.0, 4: 0.0, 3: 0.5})
    gpus = [PlanGpu(0, A100)]
    assert plan(gpus, [a, b], objective="miso").gpus[0].assignment["b"].slices == 3
    assert plan(gpus, [a, b], objective="miso", risk=1.0).gpus[0].assignment["b"].slices == 4


def test_required_job_that_fits_nowhere_is_an_error() -> None:
    job = PlanJob("huge", {7: 1.0}, memory_mb=10**6, required=True)
    with pytest.raises(PlanError, match="huge"):
        plan([PlanGpu(0, A100)], [job])


def test_plan_gpu_paper_mode_uses_one_instance_per_job() -> None:
    jobs = [PlanJob(n, {7: 1.0, 4: 1.2, 3: 1.3, 2: 2.0, 1: 3.5}) for n in ("a", "b")]
    layout, assignment = plan_gpu(A100, jobs, slices_equal_jobs=True, exclude=["4g.20gb+3g.20gb"])
    assert len(layout) == 2
    assert layout.name == "3g.20gb+3g.20gb"  # the paper: two jobs always get 3g+3g
    assert sorted(s.slices for s in assignment.values()) == [3, 3]


@pytest.mark.parametrize("seed", range(6))
def test_plan_gpu_matches_permutation_search(seed: int) -> None:
    rng = random.Random(seed)
    jobs = [_job(rng, f"j{i}") for i in range(rng.randint(1, 4))]
    got = plan_gpu(A100, jobs, slices_equal_jobs=True)
    best = None
    for lay in enumerate_layouts(A100, maximal=False):
        if len(lay) != len(jobs):
            continue
        for perm in itertools.permutations(lay.slices):
            if all(j.fits(A100, s.slices) for j, s in zip(jobs, perm, strict=True)):
                cost = sum(j.relative[s.slices] for j, s in zip(jobs, perm, strict=True))
                best = cost if best is None else min(best, cost)
    if best is None:
        assert got is None
    else:
        assert got is not None
        layout, assignment = got
        assert len(layout) == len(jobs)
        total = sum(j.relative[assignment[j.name].slices] for j in jobs)
        assert total == pytest.approx(best)


def test_time_limited_plan_is_feasible_and_keeps_running_jobs() -> None:
    """Out of time, the planner still answers with a plan that respects every constraint."""
    from miso_cli.planning.planner import _incumbent

    rng = random.Random(5)
    gpus = [PlanGpu(i, A100) for i in range(4)]
    jobs = [_job(rng, f"j{i}") for i in range(20)]
    first = plan(gpus, jobs, objective="jct", fifo=False)
    where = first.placement()
    for j in jobs:
        if j.name in where:
            j.gpu, j.slice = where[j.name]
            j.waiting = False
    gpus = [PlanGpu(g.index, A100, g.layout) for g in first.gpus]
    jobs.append(PlanJob("late", {7: 1.0, 3: 1.5, 1: 3.0}, remaining_s=100.0))
    musts = [j.gpu is not None for j in jobs]
    for got in (
        plan(gpus, jobs, objective="jct", fifo=False, time_limit_s=1e-6),
        _incumbent(gpus, jobs, "jct", 0.0, musts),
    ):
        placed = got.placement()
        for j in jobs:
            if j.gpu is not None:
                assert j.name in placed
        for g in got.gpus:
            assert set(g.assignment.values()) <= set(g.layout.slices)
            assert len(set(g.assignment.values())) == len(g.assignment)
    incumbent = _incumbent(gpus, jobs, "jct", 0.0, musts)
    assert incumbent.moved == [] and incumbent.evicted == []


@pytest.mark.parametrize("fifo", [False, True])
@pytest.mark.parametrize("budget_calls", [0, 1, 2, 3, 5, 8])
def test_a_budget_that_runs_out_at_any_stage_still_answers_a_feasible_plan(
    monkeypatch: pytest.MonkeyPatch, fifo: bool, budget_calls: int
) -> None:
    """The budget runs out after ``budget_calls`` programmes (the clock is not read: the
    budget check is replaced), in the count-first stage or the main one: the answer is
    the best plan found, else the current assignment extended, and never an error."""
    import miso_cli.planning.planner as planner

    rng = random.Random(11)
    gpus = [PlanGpu(i, A100) for i in range(24)]
    jobs = [_job(rng, f"j{i}") for i in range(200)]
    first = plan(gpus, jobs, objective="jct", fifo=False)
    for j in jobs:
        if j.name in first.placement():
            j.gpu, j.slice = first.placement()[j.name]
            j.waiting = False
    gpus = [PlanGpu(g.index, A100, g.layout) for g in first.gpus]
    jobs += [_job(rng, f"late{i}") for i in range(40)]
    calls = {"n": 0}

    def left(deadline: float | None) -> float | None:
        calls["n"] += 1
        if calls["n"] > budget_calls:
            raise planner._OutOfTime
        return 60.0

    monkeypatch.setattr(planner, "_left", left)
    got = plan(gpus, jobs, objective="jct", fifo=fifo, time_limit_s=1.0)
    placed = got.placement()
    for j in jobs:
        if j.gpu is not None:
            assert j.name in placed  # running jobs are never dropped
    for g in got.gpus:
        assert set(g.assignment.values()) <= set(g.layout.slices)
        assert len(set(g.assignment.values())) == len(g.assignment)
        for name, sl in g.assignment.items():
            assert next(j for j in jobs if j.name == name).fits(A100, sl.slices)
    if fifo:  # strict order: no waiting job placed behind one left waiting
        queue = [j.name for j in jobs if j.gpu is None]
        flags = [n in placed for n in queue]
        assert flags == sorted(flags, reverse=True)


def test_the_fallback_plan_places_musts_first_and_never_raises() -> None:
    """A must-place job (here: pinned to an instance the layout lacks) is left waiting
    by the fallback rather than raising: out of time is never an error."""
    from miso_cli.planning.planner import _incumbent

    lay = next(lay for lay in LAYOUTS if lay.name == "7g.40gb")
    other = next(lay for lay in LAYOUTS if lay.name == "4g.20gb+3g.20gb")
    stray = PlanJob("stray", {7: 1.0, 4: 1.3}, gpu=0, slice=other.slices[0], pinned=True)
    wait = PlanJob("w", {7: 1.0, 4: 1.3, 3: 1.5})
    got = _incumbent([PlanGpu(0, A100, lay)], [wait, stray], "jct", 0.0, [False, True])
    assert got.placement() == {"w": (0, lay.slices[0])}
    assert got.evicted == ["stray"]


def test_large_backfill_plan_places_as_many_as_the_count_programme() -> None:
    """At 32 GPUs the plan is still one plan: instances inside layouts, as many jobs as fit."""
    from miso_cli.planning.planner import _groups, _most_placed

    rng = random.Random(9)
    gpus = [PlanGpu(i, A100) for i in range(32)]
    jobs = [_job(rng, f"j{i}") for i in range(300)]
    got = plan(gpus, jobs, objective="jct", fifo=False, risk=0.5)
    for g in got.gpus:
        assert set(g.assignment.values()) <= set(g.layout.slices)
        for name, sl in g.assignment.items():
            assert next(j for j in jobs if j.name == name).fits(A100, sl.slices)
    options = [
        [("class", (A100.key, c), None) for c in (7, 4, 3, 2, 1) if j.fits(A100, c)] for j in jobs
    ]
    most = _most_placed(_groups(gpus, jobs, 1e-4), jobs, options, [False] * len(jobs))
    assert len(got.placement()) == most
    # No free instance is left that a waiting job would fit.
    for g in got.gpus:
        free = [s for s in g.layout.slices if s not in g.assignment.values()]
        for s in free:
            assert not any(j.fits(A100, s.slices) for j in jobs if j.name in got.waiting)


@pytest.mark.parametrize(("wait_cost", "placed"), [(None, True), (3000.0, True), (2000.0, False)])
def test_a_priced_job_is_placed_only_when_that_beats_its_wait(
    wait_cost: float | None, placed: bool
) -> None:
    """``a`` has the GPU whole; placing ``b`` forces ``a`` onto a smaller instance (a
    restart and a slower run) and gives ``b`` one: that costs 2,330 units more
    than leaving ``b`` out. Unpriced, ``b`` is placed whatever it costs (as many jobs as
    fit); priced, only when its wait would cost more."""
    full = next(lay for lay in LAYOUTS if lay.name == "7g.40gb")
    rel = {7: 1.0, 4: 1.5, 3: 1.8}
    a = PlanJob("a", rel, remaining_s=1000.0, restart_cost_s=30.0, gpu=0, slice=full.slices[0])
    a.waiting = False
    b = PlanJob("b", rel, remaining_s=1000.0, wait_cost=wait_cost)
    got = plan([PlanGpu(0, A100, full)], [a, b], objective="jct", fifo=False)
    assert ("b" in got.placement()) == placed
    assert "a" in got.placement()
    if not placed:
        assert got.placement()["a"] == (0, full.slices[0]) and got.moved == []
