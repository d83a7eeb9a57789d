"""A lower bound on the mean job completion time any scheduler can reach on a trace.

Pure: jobs and GPUs in, a number out (HiGHS through :func:`scipy.optimize.linprog`).
``oracle`` is a policy, not a limit; this is a limit, so a user can tell how far
a policy's mean JCT is from the best possible.

The relaxation (a time-indexed fluid linear programme) keeps only what no
schedule can escape and drops everything that only makes schedules worse:

* a job cannot start before it arrives (``release_s``);
* it needs ``work_s`` seconds of whole-GPU (7g) progress and never progresses
  faster than ``max_speed`` (its best speed alone on any instance or MPS share,
  relative to a whole GPU);
* a GPU's capacity: a job running at speed ``x`` on a ``c``-slice instance
  occupies ``c/7`` of a GPU, so it occupies at least ``x / efficiency`` of one,
  where ``efficiency`` is the job's best speed *per whole GPU* over every MIG
  size (``7 s(c) / c``) and every MPS share (``100 s(p) / p``). Whatever a
  GPU runs at one instant, the jobs on it use at most one GPU between them, so
  across the cluster ``sum_j x_j / efficiency_j <= GPUs`` at every instant.

Dropped (each only lengthens real schedules): restarts, reconfiguration and
profiling time, GPU boundaries (work may split across GPUs), the layouts'
placement rules, and preemption costs. Completion times enter through two
valid inequalities per job: ``C >= release + work / max_speed``, and, because
its work runs no faster than ``max_speed`` and ends by ``C``, ``C >= M +
work / (2 max_speed)`` where ``M`` is the mean time at which its work is done
(counted at each interval's start, which only lowers it). Any real schedule
gives a feasible point of the programme with at most its own completion times,
so the optimum is a lower bound on the sum of completion times.

Scope: MPS co-location whose shares sum to at most 100 % never beats one GPU's
capacity under any interference model that only slows jobs down. Shares
summing to more than 100 % (the ``miso`` policies' 30 s profiling phases, at
100 % and 50 % each) can, under the simulator's interference model
(:mod:`miso_cli.gpu.simmps`), give a GPU more total progress than its jobs' solo
speeds per share would; with ``oversubscribed=True`` every job's efficiency is
raised by the largest such gain (``P / (100 S(P))`` over mixes of up to 7 jobs
at 100 %), which keeps the bound valid for those schedules too, at the price of
a weaker bound. The default covers every schedule that does not oversubscribe
MPS, which the baselines never do and the ``miso`` policies do only while
profiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_INTERVALS = 400  # time steps of the programme (fewer for many jobs)
MAX_CELLS = 400_000  # jobs x time steps


@dataclass(frozen=True)
class BoundJob:
    """One job as the bound sees it. Speeds are relative to a whole GPU (7g = 1.0)."""

    name: str
    release_s: float
    work_s: float  # seconds on a whole GPU, alone
    max_speed: float  # its fastest progress on any instance or share (>= 1 when 7g fits)
    efficiency: float  # its most progress per whole GPU: max over 7 s(c)/c and 100 s(p)/p


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
    fewer when jobs x steps would exceed ``MAX_CELLS``); more steps, tighter bound.
    ``oversubscribed`` only records what the jobs' efficiencies cover.
    """
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import coo_array

    if gpus < 1:
        raise ValueError("a bound needs at least one GPU")
    if not jobs:
        return Bound(0.0, 0, gpus, 0, 0.0, 0.0, oversubscribed)
    for j in jobs:
        if not (j.work_s > 0 and j.max_speed > 0 and j.efficiency > 0 and j.release_s >= 0):
            raise ValueError(f"job {j.name}: work, speed and efficiency must be positive")
    n = len(jobs)
    trivial = sum(j.work_s / j.max_speed for j in jobs) / n
    # A horizon past which some real schedule has surely finished is not needed for
    # validity (the last step is open-ended); it only sets where the steps are fine.
    release_max = max(j.release_s for j in jobs)
    fluid = sum(j.work_s / j.efficiency for j in jobs) / gpus
    longest = max(j.work_s / j.max_speed for j in jobs)
    horizon = release_max + fluid + longest
    steps = intervals or max(20, min(MAX_INTERVALS, MAX_CELLS // n))
    step = horizon / steps
    starts = np.arange(steps + 1) * step  # interval t = [starts[t], starts[t+1]); the last open

    # Columns: y[j, t] for t from the job's release interval on, then C[j].
    col_job: list[int] = []
    col_t: list[int] = []
    col_hi: list[float] = []
    col_lo_time: list[float] = []
    first_col: list[int] = []
    for k, j in enumerate(jobs):
        t0 = min(int(j.release_s // step), steps)
        first_col.append(len(col_job))
        for t in range(t0, steps + 1):
            begin = max(float(starts[t]), j.release_s)
            if t < steps:
                length = float(starts[t + 1]) - begin
                if length <= 0:
                    continue
                col_hi.append(j.max_speed * length)
            else:
                col_hi.append(math.inf)
            col_job.append(k)
            col_t.append(t)
            col_lo_time.append(begin)
    n_y = len(col_job)
    jobs_ix = np.asarray(col_job)
    t_ix = np.asarray(col_t)
    work = np.array([j.work_s for j in jobs])
    speed = np.array([j.max_speed for j in jobs])
    eff = np.array([j.efficiency for j in jobs])
    release = np.array([j.release_s for j in jobs])
    begin = np.asarray(col_lo_time)

    # Equalities: every job's work is done.
    a_eq = coo_array(
        (np.ones(n_y), (jobs_ix, np.arange(n_y))), shape=(n, n_y + n)
    ).tocsr()
    b_eq = work
    # Inequalities: capacity per closed interval; mean-busy-time bound per job.
    closed = t_ix < steps
    rows = [t_ix[closed], steps + jobs_ix, steps + np.arange(n)]
    cols = [np.arange(n_y)[closed], np.arange(n_y), n_y + np.arange(n)]
    vals = [1.0 / eff[jobs_ix[closed]], begin / work[jobs_ix], -np.ones(n)]
    a_ub = coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(steps + n, n_y + n),
    ).tocsr()
    b_ub = np.concatenate([np.full(steps, gpus * step), -work / (2 * speed)])
    lower = np.concatenate([np.zeros(n_y), release + work / speed])
    upper = np.concatenate([np.asarray(col_hi), np.full(n, np.inf)])
    cost = np.concatenate([np.zeros(n_y), np.ones(n)])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=np.column_stack([lower, upper]),
        method="highs",
    )
    if res.status != 0 or res.x is None:  # pragma: no cover - the programme is always feasible
        raise RuntimeError(f"bound programme not solved: {res.message}")
    total = float(res.fun) - float(release.sum())
    return Bound(max(total / n, trivial), n, gpus, steps + 1, step, trivial, oversubscribed)


# ---------------------------------------------------------------- from a trace


def job_speeds(workload: object, oversubscribed: bool = False) -> tuple[float, float]:
    """``(max_speed, efficiency)`` of a catalog workload, relative to its 7g step time.

    MIG sizes that do not fit are skipped; MPS shares count at their measured
    levels (between levels throughput is linear in the share, so the best
    progress per share is at a level; below the lowest it is constant). With
    ``oversubscribed`` the MPS efficiency is raised by the largest gain the
    simulator's interference model allows beyond 100 % of shares.
    """
    mig = {c: t for c, t in getattr(workload, "mig_ms").items() if t is not None}
    step7 = mig.get(7)
    if step7 is None:
        step7 = min(mig.values()) if mig else None
    if step7 is None:
        raise ValueError(f"workload {getattr(workload, 'name', '?')} has no MIG step time")
    speeds = {c: step7 / t for c, t in mig.items()}
    best = max(speeds.values())
    eff = max(7.0 * s / c for c, s in speeds.items())
    mps_ms = dict(getattr(workload, "mps_ms"))
    if mps_ms:
        mps = {p: step7 / t for p, t in mps_ms.items() if t}
        best = max(best, max(mps.values()))
        mps_eff = max(100.0 * s / p for p, s in mps.items())
        if oversubscribed:
            mps_eff *= oversubscription_gain()
        eff = max(eff, mps_eff)
    return best, eff


def oversubscription_gain(max_jobs: int = 7) -> float:
    """Most total progress per share the interference model gives beyond 100 % of shares.

    A job at share ``p`` in a mix whose shares total ``P > 100`` progresses at
    ``solo(p) / S(P)`` while using ``p / P`` of the GPU, so its progress per GPU
    is its solo progress per share times ``P / (100 S(P))``; the largest over
    mixes of up to ``max_jobs`` jobs at 100 % each (at least 1).
    """
    from miso_cli.gpu import simmps

    gain = 1.0
    for n in range(2, max_jobs + 1):
        total = 100.0 * n
        worst = simmps.slowdown(100.0, [100.0] * (n - 1))
        gain = max(gain, total / (100.0 * worst))
    return gain


def trace_bound(
    trace: Sequence[object],
    catalog: object,
    gpus: int,
    *,
    oversubscribed: bool = False,
    intervals: int | None = None,
) -> Bound:
    """The bound for a simulator trace (:class:`miso_cli.simulator.TraceJob` rows)."""
    jobs = []
    for t in trace:
        w = catalog[getattr(t, "workload")]  # type: ignore[index]
        best, eff = job_speeds(w, oversubscribed)
        jobs.append(
            BoundJob(
                getattr(t, "name"),
                float(getattr(t, "arrival_s")),
                float(getattr(t, "duration_7g_s")),
                best,
                eff,
            )
        )
    return lower_bound(jobs, gpus, intervals=intervals, oversubscribed=oversubscribed)
