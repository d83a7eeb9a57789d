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
    behind them start when these finish). A job given a ``wait_cost`` is placed
    only when that beats leaving it to wait: then a plan that squeezes running
    jobs onto smaller instances (forced moves: restart plus slower run) to start
    a newcomer must pay for itself.

Scale: the constraint matrix is sparse, and how many jobs the best plans place
(and, with ``fifo``, the longest queue prefix that fits) is settled first by a
programme over layout counts alone (Hall's condition, :class:`_Hall`), so the
main programme only weighs costs. ``time_limit_s`` bounds the solve: the best
plan found by then, else the current assignment extended first-fit
(:func:`_incumbent`). ``benchmarks/planner.py`` measures 8 x 56 to 256 x 2,000.

Uncertainty: with ``risk > 0`` a prediction counts as ``mean + risk * std``, so
a slice whose speed is poorly known is chosen only when it wins anyway.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
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
    # What leaving the job unplaced costs, in the objective's units (its expected wait,
    # then its run); None: placing it outweighs any cost among placed jobs (as many
    # jobs as fit are placed first).
    wait_cost: float | None = None

    def fits(self, model: GpuModel, slices: int) -> bool:
        if slices not in self.relative:
            return False
        if self.memory_mb is None:
            return True
        memory = _class_memory(model, slices)
        return memory is not None and self.memory_mb <= memory


# Per GPU model object: what the planner derives from it (layouts, classes, memory per
# class). Keyed by id, with the model kept alive beside it: hashing a model hashes every
# profile and placement it has, which cost more than the lookups it served (issue 12).
_MODELS: dict[int, tuple[GpuModel, dict[object, Any]]] = {}


def _model_memo(model: GpuModel) -> dict[object, Any]:
    got = _MODELS.get(id(model))
    if got is None or got[0] is not model:
        if len(_MODELS) > 256:
            _MODELS.clear()
        got = _MODELS[id(model)] = (model, {})
    return got[1]


def _class_memory(model: GpuModel, slices: int) -> float | None:
    """Memory of ``model``'s instance of ``slices`` compute slices (None: no such class)."""
    memo = _model_memo(model)
    key = ("memory", slices)
    if key not in memo:
        try:
            memo[key] = float(model.by_slices(slices).memory_mb)
        except KeyError:
            memo[key] = None
    return memo[key]  # type: ignore[no-any-return]


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
    layouts: tuple[Layout, ...]


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
        if first.candidates is not None:
            layouts = _distinct_layouts(
                first.model, first.layout, frozenset(keep), first.candidates
            )
        else:
            # The same GPU state recurs from plan to plan: computed once.
            layouts = _distinct_maximal(first.model, first.layout, frozenset(keep))
        out.append(_Group(first.model, members, first.layout, layouts))
    return out


# Per tuple of layouts (a group's, which recur from plan to plan): which layouts hold
# each instance, and each class's instance count per layout. Keyed by id, tuple kept.
_INDEX: dict[int, tuple[object, dict[Slice, list[int]], dict[int, list[tuple[int, int]]]]] = {}


def _layout_index(
    layouts: Sequence[Layout],
) -> tuple[dict[Slice, list[int]], dict[int, list[tuple[int, int]]]]:
    """For a group's layouts: instance -> positions of the layouts holding it, and
    size class -> (position, instances of that class) for the layouts that have any."""
    got = _INDEX.get(id(layouts))
    if got is None or got[0] is not layouts:
        holding: dict[Slice, list[int]] = {}
        per_class: dict[int, list[tuple[int, int]]] = {}
        for k, lay in enumerate(layouts):
            for sl in lay.slices:
                holding.setdefault(sl, []).append(k)
            for c, n in _class_counts(lay).items():
                per_class.setdefault(c, []).append((k, n))
        if len(_INDEX) > 20_000:
            _INDEX.clear()
        got = _INDEX[id(layouts)] = (layouts, holding, per_class)
    return got[1], got[2]


def _distinct_layouts(
    model: GpuModel, current: Layout, keep: frozenset[Slice], candidates: Sequence[Layout] | None
) -> tuple[Layout, ...]:
    """The layouts of a group that can differ in the objective (see :func:`_groups`)."""
    now = _sizes(current)
    if candidates is not None:
        pairs = [(lay, _sizes(lay)) for lay in dict.fromkeys(candidates)]
    else:
        pairs = list(_maximal_sized(model))
    # The current layout represents its class (compared only where sizes match).
    if current.slices and not any(sz == now and lay == current for lay, sz in pairs):
        pairs.append((current, now))
    seen: dict[tuple[object, ...], Layout] = {}
    for lay, sz in pairs:
        sig = (sz, frozenset(keep.intersection(lay.slices))) if keep else (sz,)
        if sz == now and lay == current:
            seen[sig] = current
        elif sig not in seen:
            seen[sig] = lay
    return tuple(seen.values())


def _distinct_maximal(
    model: GpuModel, current: Layout, keep: frozenset[Slice]
) -> tuple[Layout, ...]:
    """:func:`_distinct_layouts` of the maximal layouts; the same GPU state recurs."""
    memo = _model_memo(model)
    key = ("distinct", id(current), keep)
    got = memo.get(key)
    if got is None or got[0] is not current:
        if len(memo) > 8192:
            memo.clear()
        got = memo[key] = (current, _distinct_layouts(model, current, keep, None))
    return got[1]  # type: ignore[no-any-return]


# Above this many jobs, how many are placed is settled first (see plan()).
_COUNT_FIRST = 150


# Per layout object (the planner sees the same few dozen again and again): its instances
# per size class, and its sizes. Keyed by id, with the layout kept alive beside them.
_MEMO: dict[int, tuple[Layout, dict[int, int], tuple[int, ...]]] = {}


def _memo(layout: Layout) -> tuple[Layout, dict[int, int], tuple[int, ...]]:
    got = _MEMO.get(id(layout))
    if got is None or got[0] is not layout:
        counts: dict[int, int] = {}
        for s in layout.slices:
            counts[s.slices] = counts.get(s.slices, 0) + 1
        sizes = tuple(sorted((s.slices for s in layout.slices), reverse=True))
        if len(_MEMO) > 50_000:
            _MEMO.clear()
        got = _MEMO[id(layout)] = (layout, counts, sizes)
    return got


def _class_counts(layout: Layout) -> dict[int, int]:
    """Instances per compute-slice class (do not modify: shared)."""
    return _memo(layout)[1]


def _sizes(layout: Layout) -> tuple[int, ...]:
    return _memo(layout)[2]


def _is_running(job: PlanJob) -> bool:
    return job.gpu is not None and job.slice is not None


def _maximal(model: GpuModel) -> tuple[Layout, ...]:
    memo = _model_memo(model)
    if "maximal" not in memo:
        memo["maximal"] = tuple(enumerate_layouts(model))
    return memo["maximal"]  # type: ignore[no-any-return]


def _maximal_sized(model: GpuModel) -> tuple[tuple[Layout, tuple[int, ...]], ...]:
    memo = _model_memo(model)
    if "maximal_sized" not in memo:
        memo["maximal_sized"] = tuple((lay, _sizes(lay)) for lay in _maximal(model))
    return memo["maximal_sized"]  # type: ignore[no-any-return]


def _all_layouts(model: GpuModel) -> tuple[Layout, ...]:
    memo = _model_memo(model)
    if "all" not in memo:
        memo["all"] = tuple(lay for lay in enumerate_layouts(model, maximal=False) if lay.slices)
    return memo["all"]  # type: ignore[no-any-return]


def candidate_layouts(gpu: PlanGpu) -> list[Layout]:
    """The layouts the planner may choose for ``gpu``: given ones, else maximal + current."""
    if gpu.candidates is not None:
        return list(dict.fromkeys(gpu.candidates))
    out = list(_maximal(gpu.model))
    if gpu.layout.slices and gpu.layout not in out:
        out.append(gpu.layout)
    return out


def _classes(model: GpuModel) -> list[int]:
    memo = _model_memo(model)
    if "classes" not in memo:
        memo["classes"] = sorted({p.slices for p in model.standard_profiles()}, reverse=True)
    return list(memo["classes"])


class _OutOfTime(Exception):
    """The solve budget ran out before a programme found a feasible point."""


def _left(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (a ``time.perf_counter`` reading); raises when none."""
    if deadline is None:
        return None
    left = deadline - time.perf_counter()
    if left <= 0.0:
        raise _OutOfTime
    return left


def _solve(
    cost: Any,
    upper: Any,
    matrix: Any,
    lo_b: Any,
    hi_b: Any,
    *,
    deadline: float | None = None,
    relax_first: bool = True,
) -> Any:
    """Minimise ``cost`` over integers in ``[0, upper]`` with ``lo_b <= matrix x <= hi_b``.

    The planner's programmes are close to network flows: once the layout counts
    are integers the rest is a transportation problem, so the linear relaxation
    is often integral already. It is solved first (``relax_first``); only a
    fractional answer goes to branch and bound. HiGHS's presolve costs more than
    it saves on these programmes (measured: 4.1 s against 1.0 s at 256 GPUs x
    2,000 jobs), so it is off. Returns scipy's result (``x`` None when infeasible;
    when the time ran out, the best feasible point found). Raises :class:`_OutOfTime`
    when ``deadline`` passes before any feasible point is found.
    """
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(cost)
    bounds = Bounds(np.zeros(n), np.asarray(upper, dtype=float))
    cons = LinearConstraint(matrix, np.asarray(lo_b, dtype=float), np.asarray(hi_b, dtype=float))
    options: dict[str, Any] = {"disp": False}
    left = _left(deadline)
    if left is not None:
        options["time_limit"] = left
    if relax_first:
        lp = milp(c=cost, integrality=np.zeros(n), bounds=bounds, constraints=cons, options=options)
        if lp.x is None and lp.status == 1:
            raise _OutOfTime
        if lp.x is None and lp.status == 2:  # infeasible already
            return lp
        if lp.x is not None and lp.status == 0:
            if np.abs(lp.x - np.round(lp.x)).max(initial=0.0) < 1e-7:
                return lp
        left = _left(deadline)
        if left is not None:
            options["time_limit"] = left
    options.update({"mip_rel_gap": 0.0, "presolve": False})
    res = milp(c=cost, integrality=np.ones(n), bounds=bounds, constraints=cons, options=options)
    if res.x is None and res.status == 1:  # out of time (or nodes) before a feasible point
        raise _OutOfTime
    return res


class _Hall:
    """Hall's condition for placing jobs on chosen layouts, as rows on layout counts.

    A job may take any instance of the (model, size class) pairs among its options
    (a stay option is one of them, and a pinned job's layout must keep its
    instance), so once the layouts are chosen, placing a set of jobs is a
    bipartite matching of jobs to instances, and by Hall's theorem it exists iff
    for every union ``T`` of the jobs' option sets, the jobs whose options lie
    inside ``T`` number at most the instances in ``T``. The instances in ``T`` are
    linear in how many GPUs of each group take each layout, so "these jobs fit"
    is a few linear rows over a few dozen integer layout counts, whatever the
    number of jobs: jobs count only through how many there are of each option set.
    """

    def __init__(
        self,
        groups: Sequence[_Group],
        jobs: Sequence[PlanJob],
        masks: Sequence[frozenset[tuple[str, int]]],
        dims: Sequence[frozenset[tuple[str, int]]],
        keep: Mapping[int, set[Slice]],
        deadline: float | None = None,
    ) -> None:
        import numpy as np

        self.deadline = deadline
        self.dims = list(dims)
        caps: list[tuple[int, ...]] = []
        upper: list[float] = []
        self.group_cols: list[list[int]] = []
        self.ok = True
        for grp in groups:
            need = keep.get(grp.gpus[0].index, set()) if len(grp.gpus) == 1 else set()
            vectors: set[tuple[int, ...]] = set()
            key = grp.model.key
            for lay in grp.layouts:
                if need and not need <= set(lay.slices):
                    continue
                counts = _class_counts(lay)
                vectors.add(tuple(sum(k for c, k in counts.items() if (key, c) in u) for u in dims))
            if not vectors:
                self.ok = False
            cols = []
            for v in sorted(vectors):
                cols.append(len(caps))
                caps.append(v)
                upper.append(float(len(grp.gpus)))
            self.group_cols.append(cols)
        self.sizes = [float(len(g.gpus)) for g in groups]
        self.caps = np.asarray(caps, dtype=float).reshape(len(caps), len(dims))
        self.upper = np.asarray(upper)
        self.inside = np.array([[m <= u for u in dims] for m in masks], dtype=float).reshape(
            len(masks), len(dims)
        )

    def solve(
        self,
        demand: Sequence[float],
        extra: Sequence[Sequence[float]] = (),
        extra_hi: Sequence[float] = (),
        cost: Sequence[float] = (),
        extra_rows: Sequence[tuple[Sequence[float], float, float]] = (),
    ) -> list[float] | None:
        """Integer layout counts (and ``extra`` columns) meeting every Hall row, or None.

        Row ``d`` reads: instances in ``dims[d]`` - sum of extra[c][d] * e[c] >= demand[d];
        extra columns are integers in ``[0, extra_hi[c]]``, costed by ``cost`` (to minimise).
        Returns the extra columns' values.
        """
        import numpy as np
        from scipy.sparse import csr_array

        if not self.ok:
            return None
        n_z = len(self.upper)
        n_e = len(extra)
        n = n_z + n_e
        a = np.zeros((len(self.sizes) + len(self.dims) + len(extra_rows), n))
        lo = np.zeros(a.shape[0])
        hi = np.zeros(a.shape[0])
        for r, cols in enumerate(self.group_cols):
            a[r, cols] = 1.0
            lo[r] = hi[r] = self.sizes[r]
        base = len(self.sizes)
        a[base : base + len(self.dims), :n_z] = self.caps.T
        if n_e:
            a[base : base + len(self.dims), n_z:] = -np.asarray(extra, dtype=float).T
        lo[base : base + len(self.dims)] = demand
        hi[base : base + len(self.dims)] = np.inf
        for k, (coefs, r_lo, r_hi) in enumerate(extra_rows):
            a[base + len(self.dims) + k, n_z:] = coefs
            lo[base + len(self.dims) + k] = r_lo
            hi[base + len(self.dims) + k] = r_hi
        c = np.zeros(n)
        if len(cost):
            c[n_z:] = cost
        res = _solve(
            c,
            np.concatenate([self.upper, np.asarray(extra_hi)]),
            csr_array(a),
            lo,
            hi,
            deadline=self.deadline,
            relax_first=False,
        )
        if res.x is None:
            return None
        return [float(v) for v in np.round(res.x[n_z:])]


def _hall_inputs(
    groups: Sequence[_Group],
    jobs: Sequence[PlanJob],
    options: Sequence[Sequence[tuple[str, tuple[str, int], Slice | None]]],
    involved: Sequence[int],
    deadline: float | None = None,
) -> tuple[list[frozenset[tuple[str, int]]], _Hall] | None:
    """The jobs' option sets and Hall's rows over the unions of those of ``involved``.

    None when the option sets have too many unions (more than 16 rows).
    """
    masks = [frozenset(cls for _, cls, _ in opts) for opts in options]
    unions: set[frozenset[tuple[str, int]]] = set()
    for m in {masks[i] for i in involved if masks[i]}:
        unions |= {m | u for u in unions} | {m}
        if len(unions) > 16:
            return None
    dims = sorted(unions, key=lambda u: sorted(u))
    # Instances a pinned job keeps must stay in its GPU's layout.
    keep: dict[int, set[Slice]] = {}
    for i in involved:
        job = jobs[i]
        if job.pinned and job.gpu is not None and job.slice is not None:
            keep.setdefault(job.gpu, set()).add(job.slice)
    return masks, _Hall(groups, jobs, masks, dims, keep, deadline)


def _most_placed(
    groups: Sequence[_Group],
    jobs: Sequence[PlanJob],
    options: Sequence[Sequence[tuple[str, tuple[str, int], Slice | None]]],
    musts: Sequence[bool],
    deadline: float | None = None,
) -> int | None:
    """The most jobs any plan places (every must-place job among them), without FIFO.

    Jobs count only by option set, so this is a programme over layout counts and
    one integer per distinct option set. None when the must-place jobs do not
    fit or the option sets have too many unions.
    """
    involved = [i for i, opts in enumerate(options) if opts]
    if any(m and not options[i] for i, m in enumerate(musts)):
        return None
    found = _hall_inputs(groups, jobs, options, involved, deadline)
    if found is None:
        return None
    masks, hall = found
    if not hall.dims:
        return 0
    base = hall.inside[[i for i in involved if musts[i]]].sum(axis=0)
    spare: dict[frozenset[tuple[str, int]], int] = {}
    for i in involved:
        if not musts[i]:
            spare[masks[i]] = spare.get(masks[i], 0) + 1
    kinds = sorted(spare, key=lambda m: sorted(m))
    extra = [[float(m <= u) for u in hall.dims] for m in kinds]
    got = hall.solve(base, extra, [float(spare[m]) for m in kinds], [-1.0] * len(kinds))
    if got is None:
        return None
    return sum(musts) + int(sum(got))


def _fifo_prefix(
    groups: Sequence[_Group],
    jobs: Sequence[PlanJob],
    options: Sequence[Sequence[tuple[str, tuple[str, int], Slice | None]]],
    musts: Sequence[bool],
    queue: Sequence[int],
    deadline: float | None = None,
) -> tuple[int, int, int] | None:
    """Which FIFO prefixes the best plans place: ``(shortest, longest, placed)``.

    Every plan that places the most jobs places ``queue[:k]`` for some ``k`` in
    ``[shortest, longest]`` (no job behind ``longest`` ever fits) and ``placed``
    jobs in all. When every job outside the queue must be placed, that is the
    longest ``k`` for which the must-place jobs and ``queue[:k]`` all fit.

    Exact, and without enumerating layouts or plans: "these jobs fit" is Hall's
    condition on layout counts (:class:`_Hall`), a programme of a few dozen
    integers; feasibility only falls as ``k`` grows, so a binary search over
    ``k`` finds the longest prefix in a logarithmic number of such programmes.

    Jobs outside the queue that may stay unplaced (evictable running jobs) can
    trade places with queue jobs: then one programme with a 0/1 variable per
    queue position (``y[k] >= y[k+1]``, the prefix) and a count per option set
    of those jobs finds the most jobs placed, and two more the shortest and the
    longest prefix among the plans placing that many.

    None when the must-place jobs alone do not fit, or when the option sets have
    too many unions (the caller then keeps the ordering constraints, exact as well).
    """
    import numpy as np

    options_masks = [frozenset(cls for _, cls, _ in opts) for opts in options]
    in_queue = set(queue)
    involved = [i for i in range(len(jobs)) if musts[i] or i in in_queue]
    free = [i for i in range(len(jobs)) if options_masks[i] and not musts[i] and i not in in_queue]
    if any(musts[i] and not options_masks[i] for i in involved):
        return None
    # A queue job that fits nowhere ends every feasible prefix.
    limit = len(queue)
    for k, i in enumerate(queue):
        if not options_masks[i] and not musts[i]:
            limit = k
            break
    found = _hall_inputs(groups, jobs, options, involved + free, deadline)
    if found is None:
        return None
    masks, hall = found
    if not hall.dims:  # nothing fits anywhere (and no job must be placed)
        return 0, 0, 0
    inside = hall.inside
    base = inside[[i for i in involved if musts[i]]].sum(axis=0)
    # Row k: what queue[:k] adds (a queue job that must be placed is in ``base``).
    steps = [inside[i] * (0.0 if musts[i] else 1.0) for i in queue[:limit]]
    adds = np.cumsum(np.vstack([np.zeros(len(hall.dims)), *steps]), axis=0)
    counts = [0 if musts[i] else 1 for i in queue[:limit]]

    def placed(k: int) -> int:
        return sum(musts) + sum(counts[:k])

    def fits(k: int) -> bool:
        return hall.solve(base + adds[k]) is not None

    lo, hi = 0, limit  # fits(lo); the answer lies in [lo, hi]
    if fits(limit):  # the whole queue fits (light load): one programme
        lo = limit
    elif not fits(0):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    if not free:
        return lo, lo, placed(lo)
    # FIFO still requires every queue job up to the last required one.
    first = max((k + 1 for k, i in enumerate(queue) if musts[i]), default=0)
    if first > lo:
        return lo, lo, placed(lo)  # no plan: the programme reports it
    # Columns: y[1..lo] (the prefix), then a count per option set of the free jobs.
    spare: dict[frozenset[tuple[str, int]], int] = {}
    for i in free:
        spare[masks[i]] = spare.get(masks[i], 0) + 1
    kinds = sorted(spare, key=lambda m: sorted(m))
    extra = [list(s) for s in steps[:lo]] + [[float(m <= u) for u in hall.dims] for m in kinds]
    extra_hi = [1.0] * lo + [float(spare[m]) for m in kinds]
    chain = []
    for k in range(lo - 1):  # y[k+1] <= y[k]
        row = [0.0] * len(extra)
        row[k + 1], row[k] = 1.0, -1.0
        chain.append((row, -math.inf, 0.0))
    for k in range(first):  # y[k] = 1
        row = [0.0] * len(extra)
        row[k] = 1.0
        chain.append((row, 1.0, 1.0))
    count = [float(c) for c in counts[:lo]] + [1.0] * len(kinds)
    got = hall.solve(base, extra, extra_hi, [-c for c in count], chain)
    assert got is not None  # the prefix ``lo`` alone is feasible
    most = sum(c * v for c, v in zip(count, got, strict=True))
    at_most = [*chain, (count, most - 0.5, math.inf)]
    prefix = [1.0] * lo + [0.0] * len(kinds)
    short = hall.solve(base, extra, extra_hi, prefix, at_most)
    long = hall.solve(base, extra, extra_hi, [-p for p in prefix], at_most)
    assert short is not None and long is not None
    return int(sum(short[:lo])), int(sum(long[:lo])), sum(musts) + int(round(most))


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
    time_limit_s: float | None = None,
) -> Plan:
    """The best layout per GPU and assignment of ``jobs`` (in queue order) to their instances.

    ``fifo``: waiting jobs are placed as a prefix of their order (strict first come
    first served); otherwise any subset, earlier jobs winning ties.
    ``allow_evict``: running jobs that are not ``required`` may go back to the queue.
    ``reconfig_cost``: charged, in objective units, for each GPU whose layout changes
    (by default just enough to keep a layout when another is no better).
    ``time_limit_s``: a budget for the whole plan (every programme it solves): the
    best feasible plan found when the budget runs out, else, when none is found yet,
    every running job keeps its instance and waiting jobs take free instances
    first-fit (the current assignment, extended: :func:`_incumbent`), never an
    error. Only this budget reads a clock; without it the plan is optimal and
    depends on its inputs alone.
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
    if len({g.index for g in gpus}) != len(gpus):
        raise ValueError("GPU indices must be unique")
    deadline = None if time_limit_s is None else time.perf_counter() + max(0.0, time_limit_s)
    try:
        return _plan(gpus, jobs, objective, fifo, risk, allow_evict, reconfig_cost, deadline)
    except _OutOfTime:
        musts = [j.required or j.pinned or (_is_running(j) and not allow_evict) for j in jobs]
        return _incumbent(gpus, jobs, objective, risk, musts, fifo)


def _plan(
    gpus: Sequence[PlanGpu],
    jobs: Sequence[PlanJob],
    objective: str,
    fifo: bool,
    risk: float,
    allow_evict: bool,
    reconfig_cost: float,
    deadline: float | None,
) -> Plan:
    """:func:`plan` once its inputs are checked; raises :class:`_OutOfTime`."""
    gpu_index = {g.index: g for g in gpus}
    import numpy as np
    from scipy.sparse import coo_array

    models = {g.model.key: g.model for g in gpus}
    classes = {key: _classes(model) for key, model in models.items()}
    groups = _groups(gpus, jobs, reconfig_cost)
    # Variables: z[group, layout] (how many of the group's GPUs take that layout),
    # then per job: stay (if possible) and one option per (model, size class).
    cost: list[float] = []
    upper: list[float] = []
    z: list[list[int]] = []
    for grp in groups:
        cols = []
        for lay in grp.layouts:
            changes = bool(grp.current.slices) and lay is not grp.current and lay != grp.current
            cols.append(len(cost))
            cost.append(reconfig_cost if changes else 0.0)
            upper.append(float(len(grp.gpus)))
        z.append(cols)
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
                for c in classes[key]:
                    if job.fits(model, c):
                        opts.append(("class", (key, c), None))
                        costs.append(job_cost(job, c, running, objective, risk))
        options.append(opts)
        raw.append(costs)
    # FIFO: the longest prefix of the queue that fits beside the jobs that must be
    # placed, found by a small programme over layout counts; no job behind it can
    # be placed.
    musts = [j.required or j.pinned or (_is_running(j) and not allow_evict) for j in jobs]
    queue_ix = [i for i, j in enumerate(jobs) if j.waiting and not _is_running(j)] if fifo else []
    lo_x = [1.0 if m else 0.0 for m in musts]
    hi_x = [1.0] * len(jobs)
    determined = False  # how many jobs are placed is fixed; only costs remain
    count = 0
    chain = bool(queue_ix)
    priced = any(j.wait_cost is not None for j in jobs)  # the count is not settled first
    if queue_ix and not priced:
        found = _fifo_prefix(groups, jobs, options, musts, queue_ix, deadline)
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
    elif len(jobs) > _COUNT_FIRST and not priced:
        # Backfilling: how many jobs the best plans place, the same way (for small
        # programmes one solve with a placement reward is cheaper than two).
        most = _most_placed(groups, jobs, options, musts, deadline)
        if most is not None:
            count = most
            determined = True
    # Placing one more job outweighs any difference in cost among placed jobs.
    spread = sum(max((abs(c) for c in costs), default=0.0) for costs in raw)
    big = spread + reconfig_cost * len(gpus) + 1.0
    order_eps = big / (4.0 * (len(jobs) + 1) ** 2) if not fifo else 0.0
    xvars: list[list[int]] = []
    for pos, costs in enumerate(raw):
        # Without FIFO, earlier jobs still win ties: a reward that shrinks with position.
        priced_at = jobs[pos].wait_cost
        if priced_at is not None and not musts[pos]:
            reward = float(priced_at) + 1e-6 * (len(jobs) - pos)
        else:
            reward = (0.0 if determined else big) + order_eps * (len(jobs) - pos)
        start = len(cost)
        cost.extend(c - reward for c in costs)
        upper.extend([1.0] * len(costs))
        xvars.append(list(range(start, start + len(costs))))

    # The constraint matrix, sparse: (row, column, value) triples.
    r_ix: list[int] = []
    c_ix: list[int] = []
    vals: list[float] = []
    lo_b: list[float] = []
    hi_b: list[float] = []

    def constraint(cols: Sequence[int], coefs: Sequence[float], lo: float, hi: float) -> None:
        r = len(lo_b)
        r_ix.extend([r] * len(cols))
        c_ix.extend(cols)
        vals.extend(coefs)
        lo_b.append(lo)
        hi_b.append(hi)

    for gi, grp in enumerate(groups):
        n_gpus = float(len(grp.gpus))
        constraint(z[gi], [1.0] * len(z[gi]), n_gpus, n_gpus)
    # Which of a lone GPU's layouts hold each instance (for the jobs that stay).
    holding: dict[int, dict[Slice, list[int]]] = {}
    by_class: dict[tuple[str, int], list[int]] = {}
    for pos, (job, opts, xs) in enumerate(zip(jobs, options, xvars, strict=True)):
        if musts[pos] and not xs:
            raise PlanError(f"job {job.name} fits no instance of the GPUs at hand")
        if xs:
            constraint(xs, [1.0] * len(xs), lo_x[pos], hi_x[pos])
        for (kind, cls, sl), x in zip(opts, xs, strict=True):
            by_class.setdefault(cls, []).append(x)
            if kind == "stay":
                assert job.gpu is not None and sl is not None
                gi = group_of[job.gpu]
                if gi not in holding:
                    index, _ = _layout_index(groups[gi].layouts)
                    holding[gi] = {s: [z[gi][k] for k in ks] for s, ks in index.items()}
                having = holding[gi].get(sl, [])
                constraint([x, *having], [1.0] + [-1.0] * len(having), -math.inf, 0.0)
    if determined:
        every = [x for xs in xvars for x in xs]
        constraint(every, [1.0] * len(every), float(count), float(count))
    # Capacity per (model, size class): starters and movers + stayers <= instances chosen.
    for key in models:
        for c in classes[key]:
            xs = by_class.get((key, c))
            if not xs:
                continue
            cols = list(xs)
            coefs = [1.0] * len(xs)
            for gi, grp in enumerate(groups):
                if grp.model.key != key:
                    continue
                for k, count in _layout_index(grp.layouts)[1].get(c, ()):
                    cols.append(z[gi][k])
                    coefs.append(-float(count))
            constraint(cols, coefs, -math.inf, 0.0)
    if chain:
        queue = [xvars[i] for i in range(len(jobs)) if jobs[i].waiting and not _is_running(jobs[i])]
        for prev, nxt in itertools.pairwise(queue):
            if nxt:
                constraint(nxt + prev, [1.0] * len(nxt) + [-1.0] * len(prev), -math.inf, 0.0)

    n = len(cost)
    matrix = coo_array((vals, (r_ix, c_ix)), shape=(len(lo_b), n)).tocsr()
    res = _solve(np.asarray(cost), upper, matrix, lo_b, hi_b, deadline=deadline)
    if res.x is None:
        raise PlanError(f"no feasible plan ({res.message})")
    sol = np.round(res.x).astype(int)

    layouts: dict[int, Layout] = {}
    for gi, grp in enumerate(groups):
        # GPUs that already have a layout equivalent to a chosen one keep it (nothing
        # to change); the others take what is left, in order.
        wanted: dict[tuple[int, ...], list[Layout]] = {}
        for col, lay in zip(z[gi], grp.layouts, strict=True):
            if sol[col]:
                wanted.setdefault(_sizes(lay), []).extend([lay] * int(sol[col]))
        rest = []
        for g in grp.gpus:
            same = wanted.get(_sizes(g.layout))
            if same:
                same.pop()
                layouts[g.index] = g.layout
            else:
                rest.append(g)
        left = [lay for lays in wanted.values() for lay in lays]
        for g, lay in zip(rest, left, strict=False):
            layouts[g.index] = lay
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
    free: dict[tuple[str, int], dict[int, list[Slice]]] = {}
    for g in sorted(gpus, key=lambda g: g.index):
        for s in sorted(layouts[g.index].slices):
            if s not in taken[g.index]:
                free.setdefault((g.model.key, s.slices), {}).setdefault(g.index, []).append(s)
    for job, cls in movers:
        pools = free.get(cls, {})
        own = job.gpu is not None and job.gpu in pools
        gi = job.gpu if own else next(iter(pools), None)
        if gi is None:  # pragma: no cover - the capacity constraints make this impossible
            raise PlanError(f"internal: no {cls[1]}g instance left for {job.name}")
        assignment[gi][job.name] = pools[gi].pop(0)
        if not pools[gi]:
            del pools[gi]
    return _result(gpus, jobs, layouts, assignment, waiting, objective, risk)


def _result(
    gpus: Sequence[PlanGpu],
    jobs: Sequence[PlanJob],
    layouts: Mapping[int, Layout],
    assignment: Mapping[int, dict[str, Slice]],
    waiting: list[str],
    objective: str,
    risk: float,
) -> Plan:
    where = {name: (gi, sl) for gi, a in assignment.items() for name, sl in a.items()}
    value = _value(jobs, where, objective, risk)
    moved = [
        j.name
        for j in jobs
        if _is_running(j) and j.name in where and (j.gpu, j.slice) != where[j.name]
    ]
    evicted = [j.name for j in jobs if _is_running(j) and j.name not in where]
    return Plan(
        [GpuPlan(g.index, g.model, layouts[g.index], assignment[g.index]) for g in gpus],
        waiting,
        objective,
        value,
        moved,
        evicted,
    )


def _incumbent(
    gpus: Sequence[PlanGpu],
    jobs: Sequence[PlanJob],
    objective: str,
    risk: float,
    musts: Sequence[bool],
    fifo: bool = False,
) -> Plan:
    """A feasible plan without the solver: running jobs stay, waiting ones fill free instances.

    GPUs keep their layouts (an empty GPU takes one whole-GPU instance); the jobs
    that must be placed first, then the waiting ones in order, take the free
    instance they fit with the lowest cost (with ``fifo``, the queue stops at the
    first waiting job that fits none). What the plan it answers cannot place
    waits (a running one is evicted): never an error, so that a plan out of time
    is always an answer.
    """
    layouts: dict[int, Layout] = {}
    for g in gpus:
        layouts[g.index] = g.layout if g.layout.slices else min(_maximal(g.model), key=len)
    assignment: dict[int, dict[str, Slice]] = {g.index: {} for g in gpus}
    taken: dict[int, set[Slice]] = {g.index: set() for g in gpus}
    waiting: list[str] = []
    pending: list[tuple[int, PlanJob]] = []
    for pos, job in enumerate(jobs):
        if _is_running(job) and job.gpu in layouts and job.slice in layouts[job.gpu].slices:
            assignment[job.gpu][job.name] = job.slice  # type: ignore[index]
            taken[job.gpu].add(job.slice)  # type: ignore[index, arg-type]
        else:
            pending.append((pos, job))
    by_index = {g.index: g for g in gpus}
    pending.sort(key=lambda pj: not musts[pj[0]])  # stable: musts first, then in order
    blocked = False
    for pos, job in pending:
        if blocked and not musts[pos]:
            waiting.append(job.name)
            continue
        spots = [
            (job_cost(job, s.slices, _is_running(job), objective, risk), gi, s)
            for gi, lay in layouts.items()
            for s in lay.slices
            if s not in taken[gi] and not job.pinned and job.fits(by_index[gi].model, s.slices)
        ]
        if not spots:
            waiting.append(job.name)
            blocked = fifo and job.waiting and not _is_running(job)
            continue
        _, gi, s = min(spots, key=lambda t: (t[0], t[1], t[2]))
        assignment[gi][job.name] = s
        taken[gi].add(s)
    return _result(gpus, jobs, layouts, assignment, waiting, objective, risk)


def _value(
    jobs: Sequence[PlanJob],
    where: Mapping[str, tuple[int, Slice]],
    objective: str,
    risk: float,
) -> float:
    """The objective over the placed jobs, as reported (mean slowdown for ``miso``)."""
    total = 0.0
    count = 0
    for job in jobs:
        at = where.get(job.name)
        if at is None:
            continue
        moved = _is_running(job) and (job.gpu, job.slice) != at
        total += job_cost(job, at[1].slices, moved, objective, risk)
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
