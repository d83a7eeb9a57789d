"""A lower bound on the mean job completion time any scheduler can reach on a trace.

Pure: jobs and GPUs in, a number out (HiGHS through :func:`scipy.optimize.linprog`).
``oracle`` is a policy, not a limit; this is a limit, so a user can tell how far
a policy's mean JCT is from the best possible.

The relaxation (a time-indexed fluid linear programme) keeps only what no
schedule can escape and drops everything that only makes schedules worse:

* a job cannot start before it arrives (``release_s``);
* it needs ``work_s`` seconds of whole-GPU (7g) progress;
* at any instant it runs in one *mode* (or not at all): an instance of ``c`` of
  7 compute slices (``c/7`` of a GPU, at its speed there) or an MPS share
  (``p/100`` of a GPU, at its speed there); over a time step it may share time
  between modes, so its (GPU used, progress) lies under the hull of its modes;
* the jobs running at one instant use at most one GPU per GPU between them, so
  across the cluster the summed fractions are at most the number of GPUs.

Dropped (each only lengthens real schedules): restarts, reconfiguration and
profiling time, GPU boundaries (work may split across GPUs), the layouts'
placement rules, and preemption costs. Completion times enter through three
valid inequalities per job: ``C >= release + work / max_speed``; because
its work runs no faster than ``max_speed`` and ends by ``C``, ``C >= M +
work / (2 max_speed)`` where ``M`` is the mean time at which its work is done
(counted at each step's start, which only lowers it); and, because it runs in
one mode at a time, ``C >= release + T`` where ``T`` is its time running, in
any mode (a job slowed by sharing runs longer). Any real schedule gives a
feasible point of the programme with at most its own completion times, so the
optimum is a lower bound on the sum of completion times.

Scope, and the MPS model (:mod:`miso_cli.gpu.sim.simmps`). Under the ``optimistic``
model, MPS shares summing to at most 100 % do not interfere, so a job's MPS
progress per share (``100 s(p) / p``) counts among its efficiencies, and that can
exceed anything MIG offers. Under the ``pessimistic`` model co-located jobs never
get more than their best MIG efficiencies allow (their demands sum to at most
the slowdown), so only MIG efficiencies (and a lone job's best speed) count: a
tighter bound, valid for schedules under that model. Under ``optimistic``, shares
summing to more than 100 % (the ``miso`` policies' 30 s profiling phases, at
100 % and 50 % each) can give a GPU more total progress than its jobs' solo
speeds per share would; with ``oversubscribed=True`` (what ``miso simulate
--bound`` uses) each job also gets the corner mode that caps what such mixes of
up to 7 jobs give (:func:`job_modes`), which keeps the bound valid for them, at
the price of a weaker bound. Without it the bound covers every schedule that
does not oversubscribe MPS, which the baselines never do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_INTERVALS = 400  # time steps of the programme (fewer for many jobs)
MAX_CELLS = 90_000  # jobs x time steps x modes (100 jobs: about 120 steps, ~10 s)


@dataclass(frozen=True)
class BoundJob:
    """One job as the bound sees it. Speeds are relative to a whole GPU (7g = 1.0).

    ``modes`` are ``(fraction of a GPU, speed)`` points the job can run at (an
    instance of ``c`` of 7 slices is ``c / 7``; an MPS share of ``p`` % is ``p / 100``);
    time-sharing between them and idling reaches everything under their hull.
    """

    name: str
    release_s: float
    work_s: float  # seconds on a whole GPU, alone
    modes: tuple[tuple[float, float], ...]

    @property
    def max_speed(self) -> float:
        return max(x for _, x in self.modes)


@dataclass(frozen=True)
class Bound:
    """The bound and how it was obtained."""

    mean_jct_s: float  # lower bound on the mean completion time (finish - arrival)
    jobs: int
    gpus: int
    intervals: int  # time steps of the programme
    step_s: float  # their length (the last one is open-ended)
    trivial_mean_jct_s: float  # the bound without capacity: mean of work / max_speed
    oversubscribed: bool  # whether MPS oversubscription is covered

    def to_json(self) -> dict[str, object]:
        return {
            "mean_jct_s": self.mean_jct_s,
            "jobs": self.jobs,
            "gpus": self.gpus,
            "intervals": self.intervals,
            "step_s": self.step_s,
            "trivial_mean_jct_s": self.trivial_mean_jct_s,
            "covers_mps_oversubscription": self.oversubscribed,
        }


def lower_bound(
    jobs: Sequence[BoundJob],
    gpus: int,
    *,
    intervals: int | None = None,
    oversubscribed: bool = False,
) -> Bound:
    """The time-indexed fluid bound on mean JCT (see the module docstring).

    ``intervals`` sets the number of time steps (default: up to ``MAX_INTERVALS``,
    fewer when jobs x steps x modes would exceed ``MAX_CELLS``); more steps, a
    tighter bound. ``oversubscribed`` only records what the jobs' modes cover.
    """
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import coo_array

    from miso_cli.gpu.sim.simmps import concave_envelope

    if gpus < 1:
        raise ValueError("a bound needs at least one GPU")
    if not jobs:
        return Bound(0.0, 0, gpus, 0, 0.0, 0.0, oversubscribed)
    hulls = []
    for j in jobs:
        if not (j.work_s > 0 and j.release_s >= 0 and j.modes):
            raise ValueError(f"job {j.name}: work must be positive, release >= 0, modes given")
        if any(u <= 0 or x <= 0 for u, x in j.modes):
            raise ValueError(f"job {j.name}: every mode needs a positive share and speed")
        hulls.append(concave_envelope([(0.0, 0.0), *j.modes])[1:])
    n = len(jobs)
    speed = np.array([j.max_speed for j in jobs])
    work = np.array([j.work_s for j in jobs])
    release = np.array([j.release_s for j in jobs])
    trivial = float((work / speed).mean())
    # Where the steps are fine; the last step is open-ended, so any horizon is valid.
    best_eff = np.array([max(x / u for u, x in h) for h in hulls])
    horizon = float(release.max() + (work / best_eff).sum() / gpus + (work / speed).max())
    modes = sum(len(h) for h in hulls) / n
    steps = intervals or int(max(20, min(MAX_INTERVALS, MAX_CELLS / (n * modes))))
    step = horizon / steps
    # Columns: time tau[j, t, m] spent in mode m during step t, then C[j].
    c_job: list[int] = []
    c_cell: list[int] = []  # (job, step) cell, for "one mode at a time"
    c_t: list[int] = []
    c_u: list[float] = []
    c_x: list[float] = []
    c_begin: list[float] = []
    cell_len: list[float] = []
    for k, j in enumerate(jobs):
        for t in range(min(int(j.release_s // step), steps), steps + 1):
            begin = max(t * step, j.release_s)
            length = (t + 1) * step - begin if t < steps else math.inf
            if length <= 0:
                continue
            cell = len(cell_len)
            cell_len.append(length)
            for u, x in hulls[k]:
                c_job.append(k)
                c_cell.append(cell)
                c_t.append(t)
                c_u.append(u)
                c_x.append(x)
                c_begin.append(begin)
    n_tau = len(c_job)
    job_ix = np.asarray(c_job)
    cell_ix = np.asarray(c_cell)
    t_ix = np.asarray(c_t)
    u_v = np.asarray(c_u)
    x_v = np.asarray(c_x)
    begin_v = np.asarray(c_begin)
    lens = np.asarray(cell_len)
    cols = np.arange(n_tau)
    # Equalities: every job's work is done.
    a_eq = coo_array((x_v, (job_ix, cols)), shape=(n, n_tau + n)).tocsr()
    # Inequalities: GPUs per closed step; one mode at a time per closed cell; busy time.
    closed = t_ix < steps
    finite = np.isfinite(lens)
    cell_rows = np.cumsum(finite) - 1  # closed cells numbered 0..
    n_cells = int(finite.sum())
    # Busy time: a job runs in one mode at a time, so the time it spends running fits
    # between its release and its completion: C >= release + sum of its tau.
    busy = steps + n_cells + n
    rows = [
        t_ix[closed],
        steps + cell_rows[cell_ix[finite[cell_ix]]],
        steps + n_cells + job_ix,
        steps + n_cells + np.arange(n),
        busy + job_ix,
        busy + np.arange(n),
    ]
    cs = [
        cols[closed],
        cols[finite[cell_ix]],
        cols,
        n_tau + np.arange(n),
        cols,
        n_tau + np.arange(n),
    ]
    vals = [
        u_v[closed],
        np.ones(int(finite[cell_ix].sum())),
        begin_v * x_v / work[job_ix],
        -np.ones(n),
        np.ones(n_tau),
        -np.ones(n),
    ]
    a_ub = coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cs))),
        shape=(busy + n, n_tau + n),
    ).tocsr()
    b_ub = np.concatenate(
        [np.full(steps, gpus * step), lens[finite], -work / (2 * speed), -release]
    )
    lower = np.concatenate([np.zeros(n_tau), release + work / speed])
    cost = np.concatenate([np.zeros(n_tau), np.ones(n)])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=work,
        bounds=np.column_stack([lower, np.full(n_tau + n, np.inf)]),
        method="highs",
    )
    if res.status != 0 or res.x is None:  # pragma: no cover - the programme is always feasible
        raise RuntimeError(f"bound programme not solved: {res.message}")
    total = float(res.fun) - float(release.sum())
    return Bound(max(total / n, trivial), n, gpus, steps + 1, step, trivial, oversubscribed)


# ---------------------------------------------------------------- from a trace


def job_modes(
    workload: Any, oversubscribed: bool = False, mps_model: str = "optimistic"
) -> tuple[tuple[float, float], ...]:
    """``(fraction of a GPU, speed)`` points a catalog workload can run at (7g speed = 1).

    Always its MIG instances that fit. Under the ``optimistic`` MPS model also
    each measured share alone or beside co-runners within 100 % (``(p/100,
    s(p))``; between levels throughput is linear in the share, so the levels'
    hull covers every share); with ``oversubscribed`` also, per level, the
    corner ``(p S(P)/P, s(p))`` that caps what a mix of shares ``P`` up to 7 x
    100 % gives (progress per GPU at most ``s(p) P / (p S(P))``, speed at most
    ``s(p)``). Under ``pessimistic`` co-located jobs never beat their MIG
    trade-off (:func:`miso_cli.gpu.sim.simmps.mig_capacity`), so MPS adds only a
    lone job's best speed on a whole GPU.
    """
    from miso_cli.gpu.sim import simmps

    if mps_model not in simmps.MPS_MODELS:
        raise ValueError(f"unknown MPS model {mps_model!r}")
    mig = {c: t for c, t in workload.mig_ms.items() if t is not None}
    if not mig:
        raise ValueError(f"workload {workload.name} has no MIG step time")
    full = max(mig)
    step_full = mig[full]
    modes = [(c / full, step_full / t) for c, t in mig.items()]
    mps = {float(p): step_full / t for p, t in dict(workload.mps_ms).items() if t}
    if mps:
        if mps_model == "pessimistic":
            modes.append((1.0, max(mps.values())))
        else:
            modes.extend((p / 100.0, x) for p, x in mps.items())
            if oversubscribed:
                most = 700.0
                slow = simmps.slowdown(100.0, [100.0] * 6)
                modes.extend((p * slow / most, x) for p, x in mps.items())
    return tuple(modes)


def trace_bound(
    trace: Sequence[Any],
    catalog: Any,
    gpus: int,
    *,
    oversubscribed: bool = False,
    intervals: int | None = None,
    mps_model: str = "optimistic",
) -> Bound:
    """The bound for a simulator trace (:class:`miso_cli.sim.simulator.TraceJob` rows)."""
    jobs = []
    for t in trace:
        w = catalog[t.workload]  # type: ignore[index]
        jobs.append(
            BoundJob(
                t.name,
                float(t.arrival_s),
                float(t.duration_7g_s),
                job_modes(w, oversubscribed, mps_model),
            )
        )
    return lower_bound(jobs, gpus, intervals=intervals, oversubscribed=oversubscribed)
