"""The planner: GPUs, jobs and predictions in; a layout per GPU and a job-to-slice assignment out.

Pure and deterministic: no clock, no driver, no printing. Two solvers share the
cost model below:

* :func:`plan` solves the whole cluster at once, exactly, as a small mixed
  integer programme (HiGHS through :func:`scipy.optimize.milp`). Layouts come
  from :func:`miso_cli.gpu.layouts.enumerate_layouts` (so 4g+3g is considered
  on an A100) plus each GPU's current layout; a slice may stay free; a running
  job may keep its instance (no checkpoint), move (paying its restart cost) or,
  when allowed, go back to the queue.
* :func:`plan_gpu` solves one GPU by exhaustive enumeration, the way the MISO
  paper's optimiser does, optionally with the paper's restriction that the
  number of instances equals the number of jobs.

Why the programme is exact yet small: on one GPU model a job's predicted speed
depends only on the *size class* of its instance (compute slices), not on which
GPU or placement. So jobs that start or move need only a size class, and the
number of free instances of each class is a linear function of the chosen
layouts. Only jobs that *keep* their instance are tied to one GPU and one
placement, which one more constraint per such job expresses. The optimum of this
programme is therefore the optimum over every layout combination and every
assignment, which ``tests/test_planner.py`` checks against brute force.

Objectives (``objective=``), all over the jobs the plan places:

``miso``
    The paper's: place as many jobs as possible (a prefix of the queue with
    ``fifo``), then minimise the mean predicted slowdown against a whole GPU.
``throughput``
    Place as many as possible, then maximise the summed predicted speed
    relative to a whole GPU (jobs per second, normalised); a moved job's speed is
    discounted by the time its restart costs over its remaining run.
``jct``
    Place as many as possible, then minimise the summed predicted time to
    completion of the placed jobs: restart cost when moved plus remaining work
    times the predicted slowdown. This is the estimate of the queue's mean
    completion time that changes with the decision at hand (the waiting jobs
    behind them start when these finish).

Uncertainty: with ``risk > 0`` a prediction counts as ``mean + risk * std``, so
a slice whose speed is poorly known is chosen only when it wins anyway.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Literal

from miso_cli.gpu.layouts import Layout, Slice, enumerate_layouts
from miso_cli.gpu.profiles import GpuModel

Objective = Literal["miso", "throughput", "jct"]
OBJECTIVES: tuple[str, ...] = ("miso", "throughput", "jct")


@dataclass
class PlanJob:
    """One job as the planner sees it. Predictions are relative to a whole GPU (7g = 1.0)."""

    name: str
    relative: Mapping[int, float]  # compute slices -> predicted relative step time
    uncertainty: Mapping[int, float] = field(default_factory=dict)
    memory_mb: float | None = None  # peak memory; None = fits wherever predicted
    remaining_s: float | None = None  # predicted seconds left on a whole GPU
    restart_cost_s: float = 30.0  # checkpoint + restore
    gpu: int | None = None  # where it runs now (None: waiting)
    slice: Slice | None = None  # its instance now (None: waiting, whole GPU or MPS)
    required: bool = False  # must be placed (e.g. it runs and cannot go back)
    pinned: bool = False  # must keep its current instance (e.g. not checkpointable)
    waiting: bool = True  # in the queue (subject to FIFO) rather than running

    def fits(self, model: GpuModel, slices: int) -> bool:
        if slices not in self.relative:
            return False
        if self.memory_mb is None:
            return True
        try:
            return self.memory_mb <= model.by_slices(slices).memory_mb
        except KeyError:
            return False


@dataclass
class PlanGpu:
    """One GPU as the planner sees it."""

    index: int
    model: GpuModel
    layout: Layout = field(default_factory=lambda: Layout(()))  # current MIG layout
    candidates: Sequence[Layout] | None = None  # None: maximal layouts + the current one


@dataclass
class GpuPlan:
    index: int
    model: GpuModel
    layout: Layout
    assignment: dict[str, Slice]

    def to_json(self, jobs: Mapping[str, PlanJob] | None = None) -> dict[str, object]:
        rows = []
        for name, sl in sorted(self.assignment.items(), key=lambda kv: (kv[1], kv[0])):
            rel = jobs[name].relative.get(sl.slices) if jobs and name in jobs else None
            rows.append(
                {
                    "job": name,
                    "profile": sl.profile,
                    "placement": {"start": sl.start, "size": sl.size},
                    "predicted_relative_step_time": rel,
                }
            )
        return {
            "index": self.index,
            "model": self.model.key,
            "mode": "mig",
            "layout": self.layout.to_json(),
            "assignment": rows,
        }


@dataclass
class Plan:
    gpus: list[GpuPlan]
    waiting: list[str]
    objective: str
    value: float  # the objective's value over the placed jobs (see module docstring)
    moved: list[str] = field(default_factory=list)  # running jobs that change instance
    evicted: list[str] = field(default_factory=list)  # running jobs sent back to the queue

    def placement(self) -> dict[str, tuple[int, Slice]]:
        return {j: (g.index, s) for g in self.gpus for j, s in g.assignment.items()}


class PlanError(ValueError):
    """The facts admit no plan (e.g. a required job fits nowhere)."""


# ---------------------------------------------------------------------------- cost model


def effective(job: PlanJob, slices: int, risk: float) -> float:
    """The relative step time the planner counts: mean plus ``risk`` standard deviations."""
    rel = float(job.relative[slices])
    if risk:
        rel += risk * float(job.uncertainty.get(slices, 0.0))
    return max(rel, 1e-9)


def job_cost(job: PlanJob, slices: int, moved: bool, objective: str, risk: float = 0.0) -> float:
    """What placing ``job`` on a ``slices`` instance costs under ``objective`` (lower is better)."""
    rel = effective(job, slices, risk)
    restart = job.restart_cost_s if moved else 0.0
    if objective == "miso":
        return rel
    if objective == "throughput":
        if job.remaining_s is None or job.remaining_s <= 0:
            return -1.0 / rel
        run = job.remaining_s * rel
        return -(job.remaining_s / (run + restart))
    if objective == "jct":
        remaining = job.remaining_s if job.remaining_s is not None else 1.0
        return restart + remaining * rel
    raise ValueError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")


@dataclass
class _Group:
    """GPUs the programme treats as one pool (same model, nothing that could stay)."""

    model: GpuModel
    gpus: list[PlanGpu]
    current: Layout
    layouts: list[Layout]


def _groups(gpus: Sequence[PlanGpu], jobs: Sequence[PlanJob], reconfig_cost: float) -> list[_Group]:
    """Pool interchangeable GPUs and drop layouts that cannot differ in the objective.

    GPUs without a job that could keep its instance differ only by model (and by
    current layout when reconfiguring costs something); pooling them removes the
    symmetric solutions that would slow the search. Two layouts are equivalent on
    a GPU when they have the same instances per size class and keep the same
    running jobs' instances; the GPU's current layout represents its class.
    """
    stays: dict[int, set[Slice]] = {}
    for j in jobs:
        if _is_running(j) and j.slice is not None:
            stays.setdefault(j.gpu, set()).add(j.slice)  # type: ignore[arg-type]
    pools: dict[tuple[object, ...], list[PlanGpu]] = {}
    for g in gpus:
        if g.index in stays or g.candidates is not None:
            key: tuple[object, ...] = ("one", g.index)
        else:
            key = ("pool", g.model.key, g.layout if reconfig_cost else None)
        pools.setdefault(key, []).append(g)
    out = []
    for members in pools.values():
        first = members[0]
        keep = stays.get(first.index, set()) if len(members) == 1 else set()
        current = first.layout
        seen: dict[tuple[object, ...], Layout] = {}
        for lay in candidate_layouts(first):
            sig = (_sizes(lay), frozenset(keep.intersection(lay.slices)))
            if sig not in seen or lay == current:
                seen[sig] = lay
        out.append(_Group(first.model, members, current, list(seen.values())))
    return out


def _sizes(layout: Layout) -> tuple[int, ...]:
    return tuple(sorted((s.slices for s in layout.slices), reverse=True))


def _is_running(job: PlanJob) -> bool:
    return job.gpu is not None and job.slice is not None


@lru_cache(maxsize=32)
def _maximal(model: GpuModel) -> tuple[Layout, ...]:
    return tuple(enumerate_layouts(model))


@lru_cache(maxsize=32)
def _all_layouts(model: GpuModel) -> tuple[Layout, ...]:
    return tuple(lay for lay in enumerate_layouts(model, maximal=False) if lay.slices)


def candidate_layouts(gpu: PlanGpu) -> list[Layout]:
    """The layouts the planner may choose for ``gpu``: given ones, else maximal + current."""
    if gpu.candidates is not None:
        return list(dict.fromkeys(gpu.candidates))
    out = list(_maximal(gpu.model))
    if gpu.layout.slices and gpu.layout not in out:
        out.append(gpu.layout)
    return out


def _classes(model: GpuModel) -> list[int]:
    return sorted({p.slices for p in model.standard_profiles()}, reverse=True)


# Above this many distinct capacity vectors the prefix test gives way to the programme.
_PREFIX_LIMIT = 200_000


def _fifo_prefix(
    groups: Sequence[_Group],
    jobs: Sequence[PlanJob],
    options: Sequence[Sequence[tuple[str, tuple[str, int], Slice | None]]],
    musts: Sequence[bool],
    queue: Sequence[int],
) -> tuple[int, int, int] | None:
    """Which FIFO prefixes the best plans place: ``(shortest, longest, placed)``.

    Every plan that places the most jobs places ``queue[:k]`` for some ``k`` in
    ``[shortest, longest]`` (no job behind ``longest`` ever fits) and ``placed``
    jobs in all. When every job outside the queue must be placed, that is the
    longest ``k`` for which the must-place jobs and ``queue[:k]`` all fit.

    Exact, without the programme. A job may take any instance of the (model, size
    class) pairs among its options (a stay option is one of them, and a pinned
    job's layout must keep its instance), so once the layouts are chosen this is
    a bipartite matching of jobs to instances, and by Hall's theorem it exists
    iff for every union ``T`` of the jobs' option sets, the jobs whose options
    lie inside ``T`` number at most the instances in ``T``. Each layout is thus a
    vector of instance counts over those unions; a pool's achievable vectors are
    the distinct sums of one vector per GPU, built GPU by GPU (integers packed
    into one number, so a set union is one ``numpy.unique``). Feasibility only
    falls as ``k`` grows, so a binary search finds the longest prefix.

    Jobs outside the queue that may stay unplaced (evictable running jobs) can
    trade places with queue jobs. Placeable sets of jobs are the independent sets
    of a transversal matroid, so any feasible prefix extends to a largest
    placeable set, whose size is ``|J| - max(0, max_T (jobs inside T - instances
    in T))`` (the deficiency form of Hall's theorem); the best count for each
    ``k`` is the largest such size over the layouts where the prefix fits.

    None when the must-place jobs alone do not fit, or when the vectors would be
    too many (the caller then keeps the ordering constraints, exact as well).
    """
    import numpy as np

    masks = [frozenset(cls for _, cls, _ in opts) for opts in options]
    in_queue = set(queue)
    involved = [i for i in range(len(jobs)) if musts[i] or i in in_queue]
    free = [i for i in range(len(jobs)) if masks[i] and not musts[i] and i not in in_queue]
    if any(musts[i] and not masks[i] for i in involved):
        return None
    # A queue job that fits nowhere ends every feasible prefix.
    limit = len(queue)
    for k, i in enumerate(queue):
        if not masks[i] and not musts[i]:
            limit = k
            break
    unions: set[frozenset[tuple[str, int]]] = set()
    for m in {masks[i] for i in involved + free if masks[i]}:
        unions |= {m | u for u in unions} | {m}
        if len(unions) > 16:
            return None
    dims = sorted(unions, key=lambda u: sorted(u))
    if not dims:  # nothing fits anywhere (and no job must be placed)
        return 0, 0, 0
    # Instances a pinned job keeps must stay in its GPU's layout.
    keep: dict[int, set[Slice]] = {}
    for i in involved:
        job = jobs[i]
        if job.pinned and job.gpu is not None and job.slice is not None:
            keep.setdefault(job.gpu, set()).add(job.slice)
    most = sum(len(grp.gpus) * max((len(lay) for lay in grp.layouts), default=0) for grp in groups)
    radix = most + 1
    if radix ** len(dims) >= 2**62:
        return None
    weights = [radix**d for d in range(len(dims))]
    sums = np.zeros(1, dtype=np.int64)
    for grp in groups:
        need = keep.get(grp.gpus[0].index, set()) if len(grp.gpus) == 1 else set()
        vectors = set()
        for lay in grp.layouts:
            if not need <= set(lay.slices):
                continue
            nodes = [(grp.model.key, s.slices) for s in lay.slices]
            vectors.add(tuple(sum(1 for n in nodes if n in u) for u in dims))
        # A vector no larger anywhere than another adds nothing.
        best = [
            v
            for v in vectors
            if not any(w != v and all(a >= b for a, b in zip(w, v, strict=True)) for w in vectors)
        ]
        if not best:
            return None
        step = np.array([sum(a * w for a, w in zip(v, weights, strict=True)) for v in best])
        for _ in grp.gpus:
            sums = np.unique((sums[:, None] + step[None, :]).ravel())
            if len(sums) > _PREFIX_LIMIT:
                return None
    caps = (sums[:, None] // np.array(weights, dtype=np.int64)[None, :]) % radix
    inside = np.array([[masks[i] <= u for u in dims] for i in range(len(jobs))], dtype=np.int64)
    base = inside[[i for i in involved if musts[i]]].sum(axis=0)
    # Row k: what queue[:k] adds (a queue job that must be placed is in ``base``).
    steps = [inside[i] * (0 if musts[i] else 1) for i in queue[:limit]]
    adds = np.cumsum(np.vstack([np.zeros(len(dims), dtype=np.int64), *steps]), axis=0)

    def fits(k: int) -> bool:
        return bool((caps >= base + adds[k]).all(axis=1).any())

    if not fits(0):
        return None
    lo, hi = 0, limit  # fits(lo); the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    placed = [sum(musts) + int(sum(not musts[i] for i in queue[:k])) for k in range(lo + 1)]
    if not free:
        return lo, lo, placed[lo]
    # FIFO still requires every queue job up to the last required one.
    first = max((k + 1 for k, i in enumerate(queue) if musts[i]), default=0)
    if first > lo:
        return lo, lo, placed[lo]  # no plan: the programme reports it
    others = inside[free].sum(axis=0)
    best: dict[int, int] = {}
    for k in range(first, lo + 1):
        need = base + adds[k]
        ok = (caps >= need).all(axis=1)
        short = np.maximum(0, (need + others - caps[ok]).max(axis=1))
        best[k] = placed[k] + len(free) - int(short.min())
    most = max(best.values())
    ks = [k for k, v in best.items() if v == most]
    return min(ks), max(ks), most


# ---------------------------------------------------------------------------- the cluster


def plan(
    gpus: Sequence[PlanGpu],
    jobs: Sequence[PlanJob],
    *,
    objective: str = "miso",
    fifo: bool = True,
    risk: float = 0.0,
    allow_evict: bool = False,
    reconfig_cost: float = 1e-4,
) -> Plan:
    """The best layout per GPU and assignment of ``jobs`` (in queue order) to their instances.

    ``fifo``: waiting jobs are placed as a prefix of their order (strict first come
    first served); otherwise any subset, earlier jobs winning ties.
    ``allow_evict``: running jobs that are not ``required`` may go back to the queue.
    ``reconfig_cost``: charged, in objective units, for each GPU whose layout changes
    (by default just enough to keep a layout when another is no better).
    Raises :class:`PlanError` when a required job cannot be placed.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    if not gpus:
        if any(j.required for j in jobs):
            raise PlanError("no GPU to place the required jobs on")
        return Plan([], names, objective, 0.0)
    gpu_index = {g.index: g for g in gpus}
    if len(gpu_index) != len(gpus):
        raise ValueError("GPU indices must be unique")
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    models = {g.model.key: g.model for g in gpus}
    groups = _groups(gpus, jobs, reconfig_cost)
    # Variables: z[group, layout] (how many of the group's GPUs take that layout),
    # then per job: stay (if possible) and one option per (model, size class).
    cost: list[float] = []
    integrality: list[int] = []
    lower: list[float] = []
    upper: list[float] = []

    def var(c: float, lo: float = 0.0, hi: float = 1.0) -> int:
        cost.append(c)
        integrality.append(1)
        lower.append(lo)
        upper.append(hi)
        return len(cost) - 1

    z: dict[tuple[int, int], int] = {}
    for gi, grp in enumerate(groups):
        for li, lay in enumerate(grp.layouts):
            changes = bool(grp.current.slices) and lay != grp.current
            z[(gi, li)] = var(reconfig_cost if changes else 0.0, 0.0, float(len(grp.gpus)))
    group_of = {g.index: gi for gi, grp in enumerate(groups) for g in grp.gpus}

    # Per-job option costs, first without the placement reward.
    options: list[list[tuple[str, tuple[str, int], Slice | None]]] = []
    raw: list[list[float]] = []
    for job in jobs:
        opts: list[tuple[str, tuple[str, int], Slice | None]] = []
        costs: list[float] = []
        running = _is_running(job)
        if running:
            g = gpu_index.get(job.gpu)  # type: ignore[arg-type]
            if g is not None and job.slice is not None and job.fits(g.model, job.slice.slices):
                opts.append(("stay", (g.model.key, job.slice.slices), job.slice))
                costs.append(job_cost(job, job.slice.slices, False, objective, risk))
        if not job.pinned:
            for key, model in models.items():
                for c in _classes(model):
                    if job.fits(model, c):
                        opts.append(("class", (key, c), None))
                        costs.append(job_cost(job, c, running, objective, risk))
        options.append(opts)
        raw.append(costs)
    # FIFO: the longest prefix of the queue that fits beside the jobs that must be
    # placed, found combinatorially; no job behind it can be placed.
    musts = [j.required or j.pinned or (_is_running(j) and not allow_evict) for j in jobs]
    queue_ix = [i for i, j in enumerate(jobs) if j.waiting and not _is_running(j)] if fifo else []
    lo_x = [1.0 if m else 0.0 for m in musts]
    hi_x = [1.0] * len(jobs)
    determined = False  # how many jobs are placed is fixed; only costs remain
    count = 0
    chain = bool(queue_ix)
    if queue_ix:
        found = _fifo_prefix(groups, jobs, options, musts, queue_ix)
        if found is not None:
            # Fix what every best plan shares: the prefix's bounds and the count
            # placed. The order binds only between the bounds, and the costs alone
            # choose among the plans left.
            shortest, longest, count = found
            for i in queue_ix[longest:]:
                hi_x[i] = 0.0
            for i in queue_ix[:shortest]:
                lo_x[i] = 1.0
            determined = True
            chain = shortest < longest
    # Placing one more job outweighs any difference in cost among placed jobs.
    spread = sum(max((abs(c) for c in costs), default=0.0) for costs in raw)
    big = spread + reconfig_cost * len(gpus) + 1.0
    order_eps = big / (4.0 * (len(jobs) + 1) ** 2) if not fifo else 0.0
    xvars: list[list[int]] = []
    for pos, costs in enumerate(raw):
        # Without FIFO, earlier jobs still win ties: a reward that shrinks with position.
        reward = 0.0 if determined else big + order_eps * (len(jobs) - pos)
        xvars.append([var(c - reward) for c in costs])

    rows: list[dict[int, float]] = []
    lo_b: list[float] = []
    hi_b: list[float] = []

    def constraint(coefs: dict[int, float], lo: float, hi: float) -> None:
        rows.append(coefs)
        lo_b.append(lo)
        hi_b.append(hi)

    for gi, grp in enumerate(groups):
        n_gpus = float(len(grp.gpus))
        constraint({z[(gi, li)]: 1.0 for li in range(len(grp.layouts))}, n_gpus, n_gpus)
    for pos, (job, opts, xs) in enumerate(zip(jobs, options, xvars, strict=True)):
        if musts[pos] and not xs:
            raise PlanError(f"job {job.name} fits no instance of the GPUs at hand")
        if xs:
            constraint({x: 1.0 for x in xs}, lo_x[pos], hi_x[pos])
        for (kind, _, sl), x in zip(opts, xs, strict=True):
            if kind == "stay":
                assert job.gpu is not None and sl is not None
                gi = group_of[job.gpu]
                having = {
                    z[(gi, li)]: -1.0
                    for li, lay in enumerate(groups[gi].layouts)
                    if sl in lay.slices
                }
                constraint({x: 1.0, **having}, -math.inf, 0.0)
    if determined:
        every = {x: 1.0 for xs in xvars for x in xs}
        constraint(every, float(count), float(count))
    # Capacity per (model, size class): starters and movers + stayers <= instances chosen.
    for key, model in models.items():
        for c in _classes(model):
            coefs: dict[int, float] = {}
            for opts, xs in zip(options, xvars, strict=True):
                for (_, cls, _), x in zip(opts, xs, strict=True):
                    if cls == (key, c):
                        coefs[x] = 1.0
            if not coefs:
                continue
            for gi, grp in enumerate(groups):
                if grp.model.key != key:
                    continue
                for li, lay in enumerate(grp.layouts):
                    n = sum(1 for s in lay.slices if s.slices == c)
                    if n:
                        coefs[z[(gi, li)]] = -float(n)
            constraint(coefs, -math.inf, 0.0)
    if chain:
        queue = [
            xs for job, xs in zip(jobs, xvars, strict=True) if job.waiting and not _is_running(job)
        ]
        for prev, nxt in itertools.pairwise(queue):
            coefs = {x: 1.0 for x in nxt}
            for x in prev:
                coefs[x] = coefs.get(x, 0.0) - 1.0
            if nxt:
                constraint(coefs, -math.inf, 0.0)

    n = len(cost)
    a = np.zeros((len(rows), n))
    for r, coefs in enumerate(rows):
        for v, c in coefs.items():
            a[r, v] = c
    res = milp(
        c=np.asarray(cost),
        integrality=np.asarray(integrality),
        bounds=Bounds(np.asarray(lower), np.asarray(upper)),
        constraints=LinearConstraint(a, np.asarray(lo_b), np.asarray(hi_b)),
        options={"disp": False, "mip_rel_gap": 0.0},
    )
    if res.x is None:
        raise PlanError(f"no feasible plan ({res.message})")
    sol = np.round(res.x).astype(int)

    layouts: dict[int, Layout] = {}
    for gi, grp in enumerate(groups):
        chosen = [(lay, int(sol[z[(gi, li)]])) for li, lay in enumerate(grp.layouts)]
        # GPUs that already have a chosen layout keep it; the others take what is left.
        rest = list(grp.gpus)
        for lay, count in chosen:
            same = [g for g in rest if _sizes(g.layout) == _sizes(lay)][:count]
            for g in same:
                layouts[g.index] = g.layout  # equivalent, and nothing to change
                rest.remove(g)
            chosen[chosen.index((lay, count))] = (lay, count - len(same))
        for lay, count in chosen:
            for g in rest[:count]:
                layouts[g.index] = lay
            rest = rest[count:]
    assignment: dict[int, dict[str, Slice]] = {g.index: {} for g in gpus}
    taken: dict[int, set[Slice]] = {g.index: set() for g in gpus}
    movers: list[tuple[PlanJob, tuple[str, int]]] = []
    waiting: list[str] = []
    for job, opts, xs in zip(jobs, options, xvars, strict=True):
        chosen = [o for o, x in zip(opts, xs, strict=True) if sol[x]]
        if not chosen:
            waiting.append(job.name)
            continue
        kind, cls, sl = chosen[0]
        if kind == "stay":
            assert job.gpu is not None and sl is not None
            assignment[job.gpu][job.name] = sl
            taken[job.gpu].add(sl)
        else:
            assert cls is not None
            movers.append((job, cls))
    # Give each starter or mover an instance of its class: its own GPU first, then in order.
    for job, (key, c) in movers:
        order = sorted(
            (g for g in gpus if g.model.key == key),
            key=lambda g: (g.index != job.gpu, g.index),
        )
        for g in order:
            free = [s for s in layouts[g.index].slices if s.slices == c and s not in taken[g.index]]
            if free:
                sl = min(free)
                assignment[g.index][job.name] = sl
                taken[g.index].add(sl)
                break
        else:  # pragma: no cover - the capacity constraints make this impossible
            raise PlanError(f"internal: no {c}g instance left for {job.name}")
    placed = {j for a in assignment.values() for j in a}
    value = _value(jobs, assignment, objective, risk)
    moved = [
        j.name
        for j in jobs
        if _is_running(j) and j.name in placed and (j.gpu, j.slice) != _where(assignment, j.name)
    ]
    evicted = [j.name for j in jobs if _is_running(j) and j.name not in placed]
    return Plan(
        [GpuPlan(g.index, g.model, layouts[g.index], assignment[g.index]) for g in gpus],
        waiting,
        objective,
        value,
        moved,
        evicted,
    )


def _where(assignment: Mapping[int, Mapping[str, Slice]], name: str) -> tuple[int, Slice] | None:
    for gi, a in assignment.items():
        if name in a:
            return gi, a[name]
    return None


def _value(
    jobs: Sequence[PlanJob],
    assignment: Mapping[int, Mapping[str, Slice]],
    objective: str,
    risk: float,
) -> float:
    """The objective over the placed jobs, as reported (mean slowdown for ``miso``)."""
    total = 0.0
    count = 0
    for job in jobs:
        where = _where(assignment, job.name)
        if where is None:
            continue
        moved = _is_running(job) and (job.gpu, job.slice) != where
        total += job_cost(job, where[1].slices, moved, objective, risk)
        count += 1
    if objective == "miso":
        return total / count if count else 0.0
    if objective == "throughput":
        return -total
    return total


# ---------------------------------------------------------------------------- one GPU


def plan_gpu(
    model: GpuModel,
    jobs: Sequence[PlanJob],
    *,
    objective: str = "miso",
    risk: float = 0.0,
    slices_equal_jobs: bool = False,
    exclude: Iterable[str] = (),
    current: Layout | None = None,
) -> tuple[Layout, dict[str, Slice]] | None:
    """The best layout and assignment of ALL ``jobs`` on one GPU, by exhaustive search.

    With ``slices_equal_jobs`` only layouts with exactly one instance per job are
    tried (the MISO paper's optimiser); ``exclude`` drops layouts by name (e.g.
    ``"4g.20gb+3g.20gb"``, absent from the paper's list). Moves are free here
    (every repartition resets the GPU, as in the paper). Among equal layouts the
    one closest to ``current`` wins. None when the jobs cannot all be placed.
    """
    if not jobs:
        return None
    skip = set(exclude)
    pool = _all_layouts(model) if slices_equal_jobs else _maximal(model)
    best: tuple[float, int, Layout, dict[str, Slice]] | None = None
    seen: dict[tuple[int, ...], tuple[float, list[int]] | None] = {}
    keep = set(current.slices) if current else set()
    for lay in pool:
        if lay.name in skip:
            continue
        if slices_equal_jobs and len(lay) != len(jobs):
            continue
        if len(lay) < len(jobs):
            continue
        sizes = tuple(sorted((s.slices for s in lay.slices), reverse=True))
        if sizes not in seen:
            seen[sizes] = _assign_classes(model, jobs, sizes, objective, risk)
        found = seen[sizes]
        if found is None:
            continue
        total, classes = found
        kept = len(keep.intersection(lay.slices))
        better = (
            best is None or total < best[0] - 1e-12 or (total <= best[0] + 1e-12 and kept > best[1])
        )
        if better:
            slices_by_class: dict[int, list[Slice]] = {}
            for s in sorted(lay.slices):
                slices_by_class.setdefault(s.slices, []).append(s)
            assignment: dict[str, Slice] = {}
            for job, c in zip(jobs, classes, strict=True):
                assignment[job.name] = slices_by_class[c].pop(0)
            best = (total, kept, lay, assignment)
    if best is None:
        return None
    return best[2], best[3]


def _assign_classes(
    model: GpuModel,
    jobs: Sequence[PlanJob],
    sizes: tuple[int, ...],
    objective: str,
    risk: float,
) -> tuple[float, list[int]] | None:
    """Exact minimum-cost assignment of every job to one instance of the multiset ``sizes``.

    Costs depend on the class only, so a dynamic programme over the remaining
    count of each class is exact and tiny (at most 7 instances on a GPU).
    """
    classes = sorted(set(sizes), reverse=True)
    counts = tuple(sizes.count(c) for c in classes)
    table = [
        [job_cost(job, c, False, objective, risk) if job.fits(model, c) else None for c in classes]
        for job in jobs
    ]

    @cache
    def best(i: int, left: tuple[int, ...]) -> tuple[float, tuple[int, ...]] | None:
        if i == len(jobs):
            return (0.0, ())
        out: tuple[float, tuple[int, ...]] | None = None
        for k, c in enumerate(classes):
            cost = table[i][k]
            if cost is None or left[k] == 0:
                continue
            rest = best(i + 1, left[:k] + (left[k] - 1,) + left[k + 1 :])
            if rest is None:
                continue
            total = cost + rest[0]
            if out is None or total < out[0] - 1e-12:
                out = (total, (c,) + rest[1])
        return out

    found = best(0, counts)
    if found is None:
        return None
    return found[0], list(found[1])


# ---------------------------------------------------------------------------- estimates


def estimate_mean_jct(result: Plan, jobs: Sequence[PlanJob]) -> float | None:
    """Predicted mean completion time of every job, from now, if ``result`` is kept.

    Placed jobs finish after their remaining work at their slice's predicted
    speed; each waiting job (in order) then takes the instance that frees first
    among those it fits, and runs there. None when a job's remaining work is unknown.
    """
    import heapq

    by_name = {j.name: j for j in jobs}
    if any(j.remaining_s is None for j in jobs):
        return None
    models = {g.index: g.model for g in result.gpus}
    free_at: list[tuple[float, int, int, Slice]] = []
    done: list[float] = []
    for k, g in enumerate(result.gpus):
        for s in g.layout.slices:
            job = next((n for n, sl in g.assignment.items() if sl == s), None)
            t = 0.0
            if job is not None:
                pj = by_name[job]
                t = (
                    pj.restart_cost_s
                    if pj.gpu is not None and (pj.gpu, pj.slice) != (g.index, s)
                    else 0.0
                ) + float(pj.remaining_s or 0.0) * pj.relative[s.slices]
                done.append(t)
            heapq.heappush(free_at, (t, k, s.start, s))
    for name in result.waiting:
        job = by_name[name]
        taken: list[tuple[float, int, int, Slice]] = []
        placed = False
        while free_at:
            item = heapq.heappop(free_at)
            t, k, _, s = item
            if job.fits(models[result.gpus[k].index], s.slices):
                end = t + float(job.remaining_s or 0.0) * job.relative[s.slices]
                done.append(end)
                heapq.heappush(free_at, (end, k, s.start, s))
                placed = True
                break
            taken.append(item)
        for item in taken:
            heapq.heappush(free_at, item)
        if not placed:
            return None
    return sum(done) / len(done) if done else 0.0


def estimate_nopart_mean_jct(gpus: int, jobs: Sequence[PlanJob]) -> float | None:
    """Predicted mean completion time with one job per whole GPU, in order."""
    if any(j.remaining_s is None for j in jobs) or gpus < 1:
        return None
    free = [0.0] * gpus
    done = []
    for job in jobs:
        t = min(free)
        k = free.index(t)
        free[k] = t + float(job.remaining_s or 0.0) * job.relative.get(7, 1.0)
        done.append(free[k])
    return sum(done) / len(done) if done else 0.0


# ---------------------------------------------------------------- a queue file's plan

PROFILE_LEVELS_PCT = (100, 50, 14)


@dataclass
class QueuePlan:
    """A queue planned on the GPUs there: the ``miso plan --json`` data and its parts."""

    data: dict[str, Any]
    result: Plan
    jobs: dict[str, PlanJob]


def _store_profile(
    state_dir: Any,
    spec: Any,
    prof: Any,
    info: Any,
    drv: Any,
    fps: Mapping[str, str],
    gpu_model: str,
) -> None:
    from pathlib import Path

    from miso_cli import profiles_store as store

    store.save(
        Path(state_dir),
        store.StoredProfile(
            fingerprint=prof.fingerprint,
            job=prof.job,
            command=spec.command,
            cwd=str(Path(spec.cwd).expanduser().resolve()),
            env=dict(spec.env),
            gpu_model=gpu_model,
            gpu_name=info.name,
            driver_version=drv.driver_version(),
            mode=prof.mode,
            co_runners=[fps[n] for n in prof.co_runners if n in fps],
            levels=[lv.to_json() for lv in prof.levels],
            started_at=prof.started_at,
            finished_at=prof.finished_at,
            simulated=bool(drv.is_simulated),
        ),
    )


def queue_plan(
    queue_spec: Any,
    gpu_spec: str | None,
    state_dir: Any,
    *,
    model: Any = None,
    objective: str = "jct",
    risk: float = 0.5,
    fifo: bool = False,
    profile: bool = False,
) -> QueuePlan:
    """Plan a loaded queue on the GPUs of ``gpu_spec`` from its jobs' MPS profiles.

    Profiles come from the store (fresh ones); with ``profile`` the jobs without
    one are measured now under MPS and stored. A job with no profile is a
    UsageError naming the queue file.
    """
    from pathlib import Path

    from miso_cli.errors import UsageError
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.predict import load_predictor
    from miso_cli.profiles_store import fingerprint, fresh_profiles

    if objective not in OBJECTIVES:
        raise UsageError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    sdir = Path(state_dir)
    spec = queue_spec
    label = getattr(spec, "path", None) or "the queue"
    drv = open_driver(gpu_spec, sdir)
    try:
        gpus = []
        for i in range(drv.device_count()):
            info = drv.gpu(i)
            m = drv.gpu_model(i)
            current = drv.current_layout(i) if info.mig_current else None
            gpus.append(PlanGpu(i, m, current or PlanGpu(i, m).layout))
        key = gpus[0].model.key if gpus else None
        stored = fresh_profiles(
            sdir,
            spec.jobs,
            gpu_model=key,
            driver_version=drv.driver_version(),
        )
        measured: dict[str, tuple[dict[int, float], int, float | None]] = {}
        for name, prof in stored.items():
            times = {lv: prof.step_time_s(lv) for lv in PROFILE_LEVELS_PCT}
            if all(t for t in times.values()):
                measured[name] = (
                    {k: float(v) for k, v in times.items()},
                    1 + len(prof.co_runners),
                    prof.peak_memory_mb(),
                )
        missing = [j for j in spec.jobs if j.name not in measured]
        if missing and profile:
            from miso_cli.profiler import Profiler, ProfileSettings

            settings = ProfileSettings(
                mode="colocated", levels=tuple(map(float, PROFILE_LEVELS_PCT))
            )
            fps = {j.name: fingerprint(j) for j in missing}
            by_name = {j.name: j for j in missing}
            info0 = drv.gpu(0)
            for prof in Profiler(drv, sdir, settings).profile(missing):
                _store_profile(sdir, by_name[prof.job], prof, info0, drv, fps, key or info0.name)
                times = {lv: prof.step_time_s(lv) for lv in PROFILE_LEVELS_PCT}
                if all(t for t in times.values()):
                    measured[prof.job] = (
                        {k: float(v) for k, v in times.items()},
                        1 + len(prof.co_runners),
                        prof.peak_memory_mb,
                    )
            missing = [j for j in spec.jobs if j.name not in measured]
    finally:
        close = getattr(drv, "close", None)
        if close:
            close()
    if missing:
        names = ", ".join(j.name for j in missing[:5])
        names += ", ..." if len(missing) > 5 else ""  # issue-15b: a cut list says so
        raise UsageError(
            f"{label}: no fresh profile for {len(missing)} job(s) ({names})",
            hint=f"run 'miso profile {label}' first, or pass --profile to profile them now",
        )
    pred = load_predictor(model, key or "a100-40gb", sdir)
    jobs: list[PlanJob] = []
    for j in spec.jobs:
        mps, n_mix, peak = measured[j.name]
        memory = j.memory_mb if j.memory_mb is not None else peak
        p = pred.predict_one(mps, jobs_in_mix=n_mix, memory_mb=memory, gpu_model=gpus[0].model)
        remaining = j.steps * mps[100] if j.steps else None
        jobs.append(
            PlanJob(
                j.name,
                dict(p.relative),
                dict(p.uncertainty),
                memory_mb=memory,
                remaining_s=remaining,
            )
        )
    result = plan(gpus, jobs, objective=objective, fifo=fifo, risk=risk)
    by_job = {j.name: j for j in jobs}
    slowdowns = [by_job[n].relative[s.slices] for g in result.gpus for n, s in g.assignment.items()]
    data: dict[str, Any] = {
        "gpus": [g.to_json(by_job) for g in result.gpus],
        "waiting": result.waiting,
        "objective": objective,
        "policy": "miso+",
        "predicted": {
            "mean_slowdown": sum(slowdowns) / len(slowdowns) if slowdowns else None,
            "mean_jct_s": estimate_mean_jct(result, jobs),
            "nopart_mean_jct_s": estimate_nopart_mean_jct(len(gpus), jobs),
        },
        "predictor": dict(getattr(pred, "metadata", {}) or {}),
    }
    return QueuePlan(data, result, by_job)


def queue_plan_data(
    queue_spec: Any, gpu_spec: str | None, state_dir: Any, **options: Any
) -> dict[str, Any]:
    """The data of ``miso plan QUEUE --json`` for a loaded queue (options as :func:`queue_plan`)."""
    return queue_plan(queue_spec, gpu_spec, state_dir, **options).data
