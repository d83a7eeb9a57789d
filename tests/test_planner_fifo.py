"""FIFO planning against brute force: the prefix test, and whole plans on small clusters."""

from __future__ import annotations

import functools
import itertools
import random

import pytest

from miso_cli.gpu.layouts import Layout, Slice, enumerate_layouts
from miso_cli.gpu.profiles import MODELS, GpuModel
from miso_cli.planning.planner import (
    PlanError,
    PlanGpu,
    PlanJob,
    _classes,
    _fifo_prefix,
    _groups,
    job_cost,
    plan,
)

A100 = MODELS["a100-40gb"]
A30 = MODELS["a30-24gb"]


def _layouts(model: GpuModel) -> list[Layout]:
    return list(enumerate_layouts(model))


def _job(rng: random.Random, name: str) -> PlanJob:
    r4 = rng.uniform(1.0, 1.9)
    r3 = r4 * rng.uniform(1.0, 1.25)
    r2 = r3 * rng.uniform(1.1, 1.9)
    r1 = r2 * rng.uniform(1.2, 2.1)
    rel = {7: 1.0, 4: r4, 3: r3, 2: r2, 1: r1}
    if rng.random() < 0.15:  # a job predicted on some sizes only
        for c in rng.sample([4, 3, 2, 1], 2):
            rel.pop(c)
    return PlanJob(
        name,
        rel,
        {g: 0.1 * v for g, v in rel.items()},
        memory_mb=rng.choice([None, None, 4000.0, 9000.0, 15000.0, 30000.0, 60000.0]),
        remaining_s=rng.uniform(50, 3000),
        restart_cost_s=rng.choice([5.0, 30.0, 200.0]),
    )


def _cluster(
    rng: random.Random, n_gpus: int, n_jobs: int, mixed: bool = False
) -> tuple[list[PlanGpu], list[PlanJob]]:
    """GPUs with random current layouts, some jobs running on them, the rest queued."""
    gpus = []
    for i in range(n_gpus):
        model = A30 if mixed and i == 1 else A100
        gpus.append(PlanGpu(i, model, rng.choice(_layouts(model) + [Layout(())])))
    jobs = []
    taken: set[tuple[int, Slice]] = set()
    for k in range(n_jobs):
        job = _job(rng, f"j{k}")
        g = rng.choice(gpus)
        spots = [
            s for s in g.layout.slices if (g.index, s) not in taken and job.fits(g.model, s.slices)
        ]
        if spots and rng.random() < 0.35:
            job.gpu, job.slice, job.waiting = g.index, rng.choice(spots), False
            taken.add((g.index, job.slice))
            job.pinned = rng.random() < 0.2
        elif rng.random() < 0.1:
            job.required = True
        jobs.append(job)
    # Keep the running jobs first, as a queue file lists them.
    jobs.sort(key=lambda j: j.waiting)
    return gpus, jobs


def _brute(
    gpus: list[PlanGpu],
    jobs: list[PlanJob],
    objective: str,
    risk: float,
    allow_evict: bool,
) -> tuple[int, float, set[int]] | None:
    """(placed, cost, prefix lengths) over the best FIFO plans, trying every layout and slot."""
    cands = []
    for g in gpus:
        c = _layouts(g.model)
        if g.layout.slices and g.layout not in c:
            c.append(g.layout)
        cands.append(c)
    best: tuple[int, float] | None = None
    prefixes: set[int] = set()
    for combo in itertools.product(*cands):
        slots = tuple((g, s) for g, lay in zip(gpus, combo, strict=True) for s in lay.slices)

        @functools.cache
        def search(
            i: int, used: int, broken: bool, slots: tuple = slots
        ) -> tuple[tuple[int, float, int], ...]:
            """Best (placed, -cost, prefix) from job ``i`` on; all ties, every prefix."""
            if i == len(jobs):
                return ((0, 0.0, 0),)
            job = jobs[i]
            running = job.gpu is not None and job.slice is not None
            queued = job.waiting and not running
            must = job.required or job.pinned or (running and not allow_evict)
            outs: list[tuple[int, float, int]] = []
            if not must:
                for n, c, p in search(i + 1, used, broken or queued):
                    outs.append((n, c, p))
            if not (queued and broken):
                for k, (g, s) in enumerate(slots):
                    if used >> k & 1 or not job.fits(g.model, s.slices):
                        continue
                    stays = running and (job.gpu, job.slice) == (g.index, s)
                    if job.pinned and not stays:
                        continue
                    cost = job_cost(job, s.slices, running and not stays, objective, risk)
                    for n, c, p in search(i + 1, used | 1 << k, broken):
                        outs.append((n + 1, c - cost, p + (1 if queued else 0)))
            if not outs:
                return ()
            top = max((n, round(c, 6)) for n, c, _ in outs)
            return tuple({o for o in outs if (o[0], round(o[1], 6)) == top})

        for n, c, p in search(0, 0, False):
            score = (n, round(-c, 6))
            if best is None or (score[0], -score[1]) > (best[0], -best[1]):
                best, prefixes = score, {p}
            elif score == best:
                prefixes.add(p)
    if best is None:
        return None
    return best[0], best[1], prefixes


def _score(result, jobs: list[PlanJob], objective: str, risk: float) -> tuple[int, float]:
    placed = result.placement()
    total = 0.0
    for j in jobs:
        if j.name in placed:
            moved = j.gpu is not None and (j.gpu, j.slice) != placed[j.name]
            total += job_cost(j, placed[j.name][1].slices, moved, objective, risk)
    return len(placed), total


def _prefix_inputs(gpus: list[PlanGpu], jobs: list[PlanJob], allow_evict: bool):
    """The prefix test's inputs, built as :func:`plan` builds them."""
    groups = _groups(gpus, jobs, 1e-4)
    by_index = {g.index: g for g in gpus}
    models = {g.model.key: g.model for g in gpus}
    options = []
    for job in jobs:
        opts = []
        running = job.gpu is not None and job.slice is not None
        g = by_index.get(job.gpu) if running else None
        if g is not None and job.fits(g.model, job.slice.slices):
            opts.append(("stay", (g.model.key, job.slice.slices), job.slice))
        if not job.pinned:
            for key, model in models.items():
                for c in _classes(model):
                    if job.fits(model, c):
                        opts.append(("class", (key, c), None))
        options.append(opts)
    musts = [
        j.required or j.pinned or (j.gpu is not None and j.slice is not None and not allow_evict)
        for j in jobs
    ]
    queue = [i for i, j in enumerate(jobs) if j.waiting and not (j.gpu is not None and j.slice)]
    return groups, jobs, options, musts, queue


CASES = [(seed, 1) for seed in range(40)] + [(seed, 2) for seed in range(40, 64)]


@pytest.mark.parametrize(("seed", "n_gpus"), CASES)
def test_prefix_test_matches_brute_force(seed: int, n_gpus: int) -> None:
    rng = random.Random(seed)
    n_jobs = rng.randint(2, 8 if n_gpus == 1 else 5)
    gpus, jobs = _cluster(rng, n_gpus, n_jobs, mixed=n_gpus == 2 and seed % 3 == 0)
    allow_evict = seed % 2 == 1
    found = _fifo_prefix(*_prefix_inputs(gpus, jobs, allow_evict))
    brute = _brute_counts(gpus, jobs, allow_evict)
    if brute is None:  # the must-place jobs do not fit: no claim, or no plan in range
        assert found is None or found[0] == found[1]
        return
    assert found is not None
    shortest, longest, placed = found
    n, _, prefixes = brute
    assert placed == n
    assert shortest <= min(prefixes) and max(prefixes) <= longest
    # The bounds are tight: each is the prefix of some plan placing the most.
    assert {shortest, longest} <= prefixes


def _brute_counts(
    gpus: list[PlanGpu], jobs: list[PlanJob], allow_evict: bool
) -> tuple[int, float, set[int]] | None:
    """The most jobs any FIFO plan places, and every prefix length such plans place.

    Every placed job costs the same here, so all the plans placing the most tie.
    """
    flat = [
        PlanJob(j.name, {c: 1.0 for c in j.relative}, memory_mb=j.memory_mb, restart_cost_s=0.0)
        for j in jobs
    ]
    for f, j in zip(flat, jobs, strict=True):
        f.gpu, f.slice, f.waiting, f.required, f.pinned = (
            j.gpu,
            j.slice,
            j.waiting,
            j.required,
            j.pinned,
        )
    return _brute(gpus, flat, "miso", 0.0, allow_evict)


@pytest.mark.parametrize(("seed", "n_gpus"), CASES)
@pytest.mark.parametrize("objective", ["miso", "throughput", "jct"])
def test_fifo_plan_matches_brute_force(seed: int, n_gpus: int, objective: str) -> None:
    rng = random.Random(1000 + seed)
    n_jobs = rng.randint(1, 8 if n_gpus == 1 else 5)
    gpus, jobs = _cluster(rng, n_gpus, n_jobs, mixed=n_gpus == 2 and seed % 3 == 0)
    allow_evict = seed % 2 == 0
    risk = 0.5 if seed % 3 == 1 else 0.0
    brute = _brute(gpus, jobs, objective, risk, allow_evict)
    if brute is None:
        with pytest.raises(PlanError):
            plan(gpus, jobs, objective=objective, fifo=True, risk=risk, allow_evict=allow_evict)
        return
    got = plan(gpus, jobs, objective=objective, fifo=True, risk=risk, allow_evict=allow_evict)
    n, total = _score(got, jobs, objective, risk)
    assert n == brute[0]
    assert total == pytest.approx(brute[1], rel=1e-6, abs=1e-5)
    # The plan is one: a prefix of the queue, instances inside the layouts, none shared.
    placed = got.placement()
    queue = [j.name for j in jobs if j.waiting and j.gpu is None]
    flags = [name in placed for name in queue]
    assert flags == sorted(flags, reverse=True)
    for g in got.gpus:
        assert set(g.assignment.values()) <= set(g.layout.slices)
        assert len(set(g.assignment.values())) == len(g.assignment)


def test_fifo_waits_behind_a_job_that_fits_nowhere() -> None:
    gpus = [PlanGpu(0, A100)]
    rel = {7: 1.0, 3: 1.5, 1: 3.0}
    jobs = [
        PlanJob("a", rel),
        PlanJob("huge", rel, memory_mb=80000.0),
        PlanJob("b", rel),
    ]
    got = plan(gpus, jobs, fifo=True)
    assert got.waiting == ["huge", "b"]
    assert set(plan(gpus, jobs, fifo=False).waiting) == {"huge"}
