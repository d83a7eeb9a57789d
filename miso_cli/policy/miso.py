"""The planning policies: ``miso`` (the paper's), ``oracle``, and ``miso+`` (ours).

``miso`` does what the MISO artifact does (see ``docs`` and the paper, Li et al.,
SoCC 2022):

* strict FIFO: if the head of the queue cannot be placed, nothing behind it is;
* a job may go to a GPU that is not profiling or reconfiguring, has fewer than 7
  jobs, and on which all its jobs plus this one still fit one instance each; of
  those, the GPU with the fewest jobs (then the lowest index);
* alone on a GPU the job starts on a 7g instance directly; otherwise the GPU's
  jobs and the newcomer run together under MPS for ``profile_s`` (30 s), after
  which the GPU is repartitioned on the predictions by the exhaustive optimiser
  (one instance per job, mean slowdown, the paper's partition list, which lacks
  4g+3g); every repartition resets the whole GPU;
* when a job finishes and nothing waits, the GPU is re-solved with what is known
  (no new profiling); an empty GPU goes back to one 7g instance.

``oracle`` is ``miso`` that knows every job's true speeds: no profiling phase.

``miso+`` plans with :func:`miso_cli.planning.planner.plan` (objective ``jct``,
backfilling, 4g+3g allowed, slices may stay free) the GPUs an event touches and those
with room, with blocks of GPUs swept in turn, on a cluster too large to plan whole at
every event (more than ``local_gpus``, 8), and otherwise the whole cluster at once, and:

* keeps instances whose jobs run (partial reconfiguration): a running job moves
  only when the plan's predicted gain outweighs twice its checkpoint/restart cost
  (the plan lasts only until the next arrival or finish);
* weighs every job alike for the large instances (mean slowdown, a move judged
  in seconds saved) rather than handing them to the longest jobs, except jobs
  long enough to set the makespan (3 x the backlog per GPU), weighted by their
  remaining time;
* knows remaining times from measured progress: seconds per step on the
  instance a job runs on, measured from the first look that finds it progressing;
* profiles newcomers under MPS only where that disturbs no running job (an idle
  GPU), several at once, and only when it pays (:meth:`MisoPlus.profiling_pays`:
  never for a job of unknown length); a newcomer that cannot be profiled cheaply starts on
  the cluster's prior (the mean prediction of the jobs profiled so far, with the
  spread as uncertainty) and never pays a profiling reset;
* counts uncertainty: a prediction counts as mean + ``risk`` x std. dev.;
* keeps churn under control (issue 12): a newcomer starts only when that beats
  its expected wait for an instance to free, so squeezing running jobs onto
  smaller instances for it (forced moves) must pay for their restarts and slower
  runs; a job on a GPU the event did not touch moves only for ``local_factor``
  times its cost; with ``placed_s`` from the driver, a job keeps its instance for
  ``min_residence_s``; optionally (``horizon``) a running job's instance is weighed
  over the time a plan lasts rather than its whole run; each plan has a time
  budget (``plan_time_s``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any

from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.gpu.profiles import GpuModel
from miso_cli.planning.planner import (
    Plan,
    PlanError,
    PlanGpu,
    PlanJob,
    effective,
    estimate_mean_jct,
    plan,
    plan_gpu,
)
from miso_cli.policy.core import (
    ClusterView,
    Event,
    GpuTarget,
    GpuView,
    JobView,
    Policy,
    SlicePrediction,
)

MAX_JOBS_PER_GPU = 7
# The latest arrivals the horizon (MisoPlus.horizon_s) is measured over.
HORIZON_ARRIVALS = 16
# Holding jobs back must be predicted to lower the mean completion time by this much: the
# estimate ignores later arrivals and re-plans, which favour starting jobs now.
HOLD_BACK_GAIN = 0.03
# Of a prior's relative spread, the part of a job's remaining time a wrong instance loses.
PROFILE_REGRET = 0.25
PAPER_EXCLUDED = ("4g.20gb+3g.20gb",)  # absent from the artifact's partition list
# A local plan weighs at least this many jobs from the head of the queue, more than can
# start: of them the plan starts those whose wait costs most (short jobs, see
# MisoPlus.plan_jobs), as a whole-cluster plan would (big trace: mean JCT 1,201 s with 32,
# 1,227 s with 16).
LOCAL_QUEUE = 32


_BY_ARRIVAL = attrgetter("arrival_s", "name")


def _alive(view: ClusterView, gpu: GpuView) -> list[JobView]:
    out = _alive_unsorted(view, gpu)
    out.sort(key=_BY_ARRIVAL)
    return out


_ALIVE = frozenset(("running", "profiling"))


def _alive_unsorted(view: ClusterView, gpu: GpuView) -> list[JobView]:
    """:func:`_alive` in the GPU's order."""
    return [j for j in map(view.jobs.get, gpu.jobs) if j is not None and j.state in _ALIVE]


def _full_layout(model: GpuModel) -> Layout:
    full = model.full_profile
    pl = full.placements[0]
    return Layout((Slice(pl.start, pl.size, full.name, full.slices),))


def home_model(view: ClusterView, gpus: Sequence[GpuView]) -> GpuModel:
    """The GPU model a waiting job's later instance is judged on (the first GPU's)."""
    return (gpus[0] if gpus else view.gpus[0]).model


# _fits_together's answers by (id of the GPU model, memories, exclude): the model is kept
# beside each answer, so its id is not reused while the answer is here. Keyed by id, not
# by the model, because hashing a GpuModel hashes every profile it has.
_FITS: dict[tuple[int, tuple[float | None, ...], tuple[str, ...]], tuple[GpuModel, bool]] = {}
_FITS_MAX = 65536


def _fits_together(
    model: GpuModel, memories: tuple[float | None, ...], exclude: tuple[str, ...] = PAPER_EXCLUDED
) -> bool:
    """Whether jobs with these memory needs fit one instance each on one GPU.

    By default with the paper's partition list (no 4g+3g); ``exclude=()`` for every layout.
    """
    key = (id(model), memories, exclude)
    hit = _FITS.get(key)
    if hit is not None:
        return hit[1]
    jobs = [
        PlanJob(str(i), {c: 1.0 for c in range(1, model.compute_slices + 1)}, memory_mb=m)
        for i, m in enumerate(memories)
    ]
    fits = plan_gpu(model, jobs, slices_equal_jobs=True, exclude=exclude) is not None
    if len(_FITS) >= _FITS_MAX:
        _FITS.clear()
    _FITS[key] = (model, fits)
    return fits


# _paper_partition's answers by what they depend on (the GPU model, by id and kept beside
# the answer as in _FITS; each job's speeds, memory and restart cost, in order; the current
# layout): a run meets the same mixes of workloads again and again.
_PARTITIONS: dict[tuple[Any, ...], tuple[GpuModel, tuple[Layout, tuple[Slice, ...]] | None]] = {}


def _paper_partition(gpu: GpuView, jobs: list[PlanJob]) -> tuple[Layout, dict[str, Slice]] | None:
    """The paper's optimiser on one GPU: one instance per job, mean slowdown, no 4g+3g."""
    current = gpu.layout if gpu.mode == "mig" else None
    key = (
        id(gpu.model),
        tuple(
            (tuple(j.relative.items()), tuple(j.uncertainty.items()), j.memory_mb, j.restart_cost_s)
            for j in jobs
        ),
        current,
    )
    hit = _PARTITIONS.get(key)
    if hit is None:
        solved = plan_gpu(
            gpu.model,
            jobs,
            objective="miso",
            slices_equal_jobs=True,
            exclude=PAPER_EXCLUDED,
            current=current,
        )
        # The answer by the jobs' positions: the optimiser reads a job's name only to
        # label its instance.
        answer = None if solved is None else (solved[0], tuple(solved[1][j.name] for j in jobs))
        if len(_PARTITIONS) >= _FITS_MAX:
            _PARTITIONS.clear()
        hit = _PARTITIONS[key] = (gpu.model, answer)
    if hit[1] is None:
        return None
    layout, slices = hit[1]
    return layout, {j.name: sl for j, sl in zip(jobs, slices, strict=True)}


def _plan_job(job: JobView) -> PlanJob:
    pred = job.prediction
    assert pred is not None
    return PlanJob(
        job.name,
        dict(pred.relative),
        dict(pred.uncertainty),
        memory_mb=job.memory_mb,
        restart_cost_s=job.restart_cost_s,
    )


class Miso(Policy):
    """The MISO paper's policy. See the module docstring."""

    name = "miso"
    reacts_to_progress = False
    reads_measured_speed = False  # nor does oracle
    knowledge = "profile"  # the simulator gives it predictions from MPS profiles

    def __init__(self, profile_s: float = 30.0, max_jobs: int = MAX_JOBS_PER_GPU) -> None:
        self.profile_s = profile_s
        self.max_jobs = max_jobs

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        targets: dict[int, GpuTarget] = {}
        if event.kind == "profiled" and event.gpu is not None:
            gpu = self._gpu(view, event.gpu)
            if gpu is not None:
                t = self._repartition(view, gpu, "profiled")
                if t is not None:
                    targets[gpu.index] = t
        if event.kind == "resume":
            # A GPU left under MPS without its profiling phase, or with a job the
            # driver could not keep, is solved again with what is known.
            for gpu in view.gpus:
                if gpu.busy or gpu.profiling or gpu.index in targets:
                    continue
                if gpu.mode == "mps" or (gpu.mode == "mig" and not gpu.layout.slices):
                    t = self._repartition(view, gpu, "resumed")
                    if t is not None:
                        targets[gpu.index] = t
        targets.update(self._place_queue(view, set(targets)))
        if event.kind in ("finish", "failed") and event.gpu is not None and not view.queue():
            gpu = self._gpu(view, event.gpu)
            if gpu is not None and gpu.index not in targets and not gpu.busy:
                t = self._repartition(view, gpu, f"{event.job} finished")
                if t is not None:
                    targets[gpu.index] = t
        return [targets[k] for k in sorted(targets)]

    @staticmethod
    def _gpu(view: ClusterView, index: int) -> GpuView | None:
        for g in view.gpus:
            if g.index == index:
                return g
        return None

    def _place_queue(self, view: ClusterView, skip: set[int]) -> dict[int, GpuTarget]:
        out: dict[int, GpuTarget] = {}
        # Of the GPUs that may take a job, the one with the fewest jobs (then the lowest
        # index) that holds it: tried in that order, the memory test only where needed.
        # The jobs of the GPUs that may take one (not skipped, busy or profiling).
        load = {
            g.index: _alive_unsorted(view, g)
            for g in view.gpus
            if g.index not in skip and not g.busy and not g.profiling
        }
        counts = {i: len(jobs) for i, jobs in load.items()}
        held: dict[int, tuple[float | None, ...]] = {}  # memories, of the GPUs tried
        for job in view.queue():
            open_ = sorted(
                (counts[g.index], g.index, k)
                for k, g in enumerate(view.gpus)
                if g.index in load and g.index not in out and counts[g.index] < self.max_jobs
            )
            gpu = None
            for _, index, k in open_:
                g = view.gpus[k]
                if index not in held:
                    load[index].sort(key=_BY_ARRIVAL)  # as _alive orders them
                    held[index] = tuple([j.memory_mb for j in load[index]])
                if _fits_together(g.model, held[index] + (job.memory_mb,)):
                    gpu = g
                    break
            if gpu is None:
                break  # strict FIFO: nothing passes the head of the queue
            target = self._admit(view, gpu, load[gpu.index], job)
            if target is None:
                break  # it fits by memory but no partition suits its speeds: it waits
            out[gpu.index] = target
        return out

    def _admit(
        self, view: ClusterView, gpu: GpuView, present: list[JobView], job: JobView
    ) -> GpuTarget | None:
        if not present:
            full = _full_layout(gpu.model)
            return GpuTarget(
                gpu.index,
                "mig",
                layout=full,
                assignment={job.name: full.slices[0]},
                reason=f"{job.name} alone on GPU {gpu.index}: whole GPU (7g)",
            )
        names = [j.name for j in present] + [job.name]
        return GpuTarget(
            gpu.index,
            "mps",
            assignment={n: None for n in names},
            mps_share={n: 100 for n in names},
            profile_s=self.profile_s,
            reason=f"{job.name} joins GPU {gpu.index} (fewest jobs): profile its "
            f"{len(names)} jobs together under MPS",
        )

    def _repartition(self, view: ClusterView, gpu: GpuView, why: str) -> GpuTarget | None:
        jobs = _alive(view, gpu)
        if not jobs:
            if gpu.mode == "mig" and gpu.layout == _full_layout(gpu.model):
                return None
            return GpuTarget(
                gpu.index, "mig", layout=_full_layout(gpu.model), reason=f"{why}: GPU empty, 7g"
            )
        if any(j.prediction is None for j in jobs):
            return None  # a job without a profile stays where it is until one exists
        solved = _paper_partition(gpu, [_plan_job(j) for j in jobs])
        if solved is None:
            return None
        layout, assignment = solved
        if gpu.mode == "mig" and layout == gpu.layout and assignment == dict(gpu.jobs):
            return None
        return GpuTarget(
            gpu.index,
            "mig",
            layout=layout,
            assignment=dict(assignment),
            reason=f"{why}: repartition GPU {gpu.index} to {layout.name} (mean slowdown)",
        )


class Oracle(Miso):
    """``miso`` with every job's true speeds known: no profiling phase."""

    name = "oracle"
    knowledge = "oracle"

    def _admit(
        self, view: ClusterView, gpu: GpuView, present: list[JobView], job: JobView
    ) -> GpuTarget | None:
        if not present or job.prediction is None:
            return super()._admit(view, gpu, present, job)
        jobs = [_plan_job(j) for j in present + [job]]
        solved = _paper_partition(gpu, jobs)
        if solved is None:
            # They fit by memory, but the speeds known (a catalog measured on another GPU
            # may know only the 7g) suit no partition: the newcomer waits its turn.
            return None
        layout, assignment = solved
        return GpuTarget(
            gpu.index,
            "mig",
            layout=layout,
            assignment=dict(assignment),
            reason=f"{job.name} joins GPU {gpu.index} (fewest jobs): {layout.name}",
        )


def prior_prediction(
    jobs: Iterable[JobView], classes: Sequence[int], floor_uncertainty: float = 0.15
) -> SlicePrediction:
    """The cluster's prior for a job not profiled yet: mean and spread of known predictions.

    Before anything is known, each class is assumed to run at its share of the
    GPU's compute (7/g for 7 slices), which is the pessimistic bound for
    compute-bound jobs, with a wide uncertainty.
    """
    rel: dict[int, float] = {}
    unc: dict[int, float] = {}
    known = [j.prediction for j in jobs if j.prediction is not None and j.profiled]
    full = max(classes)
    for c in classes:
        values = [p.relative[c] for p in known if c in p.relative]
        if len(values) >= 3:
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            rel[c] = mean
            unc[c] = max(var**0.5, floor_uncertainty * mean)
        else:
            rel[c] = full / c
            unc[c] = 0.5 * (full / c - 1.0) + floor_uncertainty
    return SlicePrediction(rel, unc, source="prior")


# The prior of the view being decided on: one decision asks for it several times, and
# it reads every job the run has seen. The view is kept so that its id is not reused.
_PRIOR_MEMO: dict[str, object] = {}


def _view_prior(view: ClusterView, classes: Sequence[int]) -> SlicePrediction:
    """:func:`prior_prediction` of ``view``'s jobs, computed once per view and classes."""
    key = (tuple(classes), view.now, len(view.jobs))
    if _PRIOR_MEMO.get("view") is not view or _PRIOR_MEMO.get("classes") != key:
        _PRIOR_MEMO.update(
            view=view, classes=key, prior=prior_prediction(view.jobs.values(), classes)
        )
    prior = _PRIOR_MEMO["prior"]
    assert isinstance(prior, SlicePrediction)
    return prior


class MisoPlus(Policy):
    """Ours: cluster-wide, cost-aware, partial re-planning. See the module docstring."""

    name = "miso+"
    reacts_to_progress = False
    knowledge = "profile"

    def __init__(
        self,
        profile_s: float = 30.0,
        risk: float = 0.5,
        objective: str = "jct",
        default_remaining_s: float = 600.0,
        profile: bool = True,
        move_factor: float = 2.0,
        weight_power: float = 0.0,
        measure: bool = True,
        critical: float = 3.0,
        hold_back: bool = False,
        horizon: bool = False,
        local_factor: float = 2.0,
        min_residence_s: float = 0.0,
        plan_time_s: float | None = 20.0,
        price: bool = True,
        wait_scale: float = 12.0,
        calibrate: bool = False,
        local_gpus: int | None = 8,
        sweep_every: int | None = 8,
        wide_factor: float | None = None,
    ) -> None:
        self.profile_s = profile_s
        self.risk = risk
        self.objective = objective
        self.default_remaining_s = default_remaining_s
        self.profile = profile
        # A move is charged this many times its restart cost: the plan it serves lasts
        # only until the next arrival or finish, not for the job's whole remaining run.
        self.move_factor = move_factor
        # Each job's cost in the plan is weighted by (remaining time) ** (weight_power - 1):
        # 1 minimises the summed completion time of the jobs placed now, which hands the
        # large instances to the longest jobs and so delays the many short ones behind
        # them; 0 weighs every job alike (mean slowdown; a move still pays off only when
        # it saves more time than it costs), which lowers the mean completion time.
        self.weight_power = weight_power
        # Jobs whose remaining time is ``critical`` times the cluster's backlog per GPU
        # or more set the makespan: they are weighted by their remaining time (power 1).
        self.critical = critical
        # Remaining times from measured progress (the view's measured_step_s).
        self.measure = measure
        # Start fewer jobs now when that is predicted to finish jobs sooner on average.
        # Off by default: it helps a crowd of short jobs with known speeds (the quickstart,
        # simulated: 71.2 -> 64.2 s mean JCT) but costs 12 % on examples/trace.csv on two
        # GPUs (1352 -> 1517 s), where later arrivals make the estimate too pessimistic
        # about starting jobs now.
        self.hold_back = hold_back
        # Churn (issue 12). With ``horizon``, a running job's instance is weighed over the
        # time a plan is expected to last, the time a GPU goes between arrivals (the
        # cluster's arrival rate per GPU, from the latest arrivals), not over the job's
        # whole remaining run. Off by default: measured on the suite it helps the
        # compute-heavy mix (mean JCT 1,139 -> 1,091 s) but makes long jobs on the
        # light mix go back and forth between large and small instances (913 -> 963 s,
        # restarts per job 35 -> 43 s). A move of a job whose GPU the event did not
        # touch (not the GPU a job finished, failed or was profiled on) is charged
        # ``local_factor`` times more: the whole-cluster plan must gain more than it
        # costs, so jobs are re-planned at the rate events reach their own GPU, whatever
        # the cluster size.
        self.horizon = horizon
        self.local_factor = local_factor
        # Hysteresis: a job that took its instance less than this long ago keeps it,
        # unless the driver does not say when (JobView has no ``placed_s``).
        self.min_residence_s = min_residence_s
        # A budget per plan (the planner's time_limit_s): out of time, the best plan
        # found, else the current assignment extended; None: no limit.
        self.plan_time_s = plan_time_s
        # Forced moves count (issue 12): a waiting job is started only when that beats
        # its expected wait for an instance to free (PlanJob.wait_cost), so a plan that
        # squeezes running jobs onto smaller instances for it must pay for the restarts
        # and the slower runs. False: as many jobs as fit start at once, whatever it costs.
        self.price = price
        # A job left waiting is expected to start once as many running jobs have
        # finished as there are jobs waiting, times this: the instances that free may
        # not suit it, and later arrivals compete for them.
        self.wait_scale = wait_scale
        # A job measured on two or more instance sizes is planned with its measured
        # speeds there rather than its prediction (see _calibrated). Off by default:
        # on the suite it helps the paper-like trace (mean JCT 849 -> 830 s) and hurts
        # the light mix (920 -> 931 s, past the best baseline's 918 s).
        self.calibrate = calibrate
        # Local re-planning (issue 12). On a cluster of more than ``local_gpus`` GPUs an
        # event's plan covers the GPUs it touched and those with room (idle or with a
        # free instance), at most ``local_gpus``, and the head of the queue, so the
        # programme's size does not grow with the cluster. While jobs wait, the arrival
        # and the finish of every ``sweep_every``-th job (by queue position, so the
        # policy stays pure) add a block of ``local_gpus`` GPUs, the blocks taken in
        # turn: there a newcomer may squeeze in, or a running job move, as on a
        # whole-cluster plan, and every GPU is swept at the same rate per job whatever
        # the cluster's size. A whole-cluster plan is made on ``resume`` and, with
        # ``wide_factor``, on every (``wide_factor`` x GPUs / ``local_gpus``)-th job:
        # it costs about GPUs / ``local_gpus`` local ones (at 64 GPUs, 0.2-0.8 s), more
        # than it gains on the big trace. ``local_gpus`` None: every plan is wide.
        # Measured on the big trace (``benchmarks/simulate.py``, 5,000 jobs / 64 GPUs):
        # mean JCT 1,201 s (mps 1,308 s, static 1,570 s), 19 s of restarts per job, the
        # simulation 102 s on a loaded 2-core machine. First 1,000 jobs: 1,071 s in 13 s;
        # whole-cluster plans at every event, 1,072 s in 324 s. Before local plans used
        # the cluster's backlog (see plan_jobs), sweeps every 4th job cost twice the
        # planning of every 8th for a mean JCT 0.7% lower, every 16th 1.6% higher, none
        # 8.5% higher; whole-cluster plans every 32nd job instead (wide_factor 4), 0.5%
        # lower in three times the time.
        self.local_gpus = local_gpus
        self.sweep_every = sweep_every
        self.wide_factor = wide_factor

    def warm_up(self) -> None:
        """Import the solver now: its first import takes seconds, which a run should
        spend before its jobs start, not between a profile and the plan it feeds."""
        import scipy.optimize  # noqa: F401

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        # Every event kind alike: the plan is made from the facts in the view.
        targets: dict[int, GpuTarget] = {}
        if self.profile:
            targets.update(self._profile_idle(view))
        profiled = {n for t in targets.values() for n in t.assignment}
        touched = {event.gpu} if event.gpu is not None else set()
        wide = self.wide_plan(event, view)
        sweep = [] if wide else self.sweep_block(event, view)
        targets.update(
            self._replan(
                view, skip=set(targets), exclude=profiled, touched=touched, wide=wide, sweep=sweep
            )
        )
        return [targets[k] for k in sorted(targets)]

    def wide_plan(self, event: Event, view: ClusterView) -> bool:
        """Whether ``event`` gets a whole-cluster plan rather than a local one (see
        ``local_gpus`` in :meth:`__init__`)."""
        if self.local_gpus is None or len(view.gpus) <= self.local_gpus:
            return True  # the whole cluster is within the bound
        if event.kind == "resume":
            return True  # every job may have moved since the last decision
        job = _turn_job(event, view)
        if job is None or not self.wide_factor:
            return False
        period = max(1, round(self.wide_factor * len(view.gpus) / self.local_gpus))
        return job.seq % period == 0

    def sweep_block(self, event: Event, view: ClusterView) -> list[int]:
        """The GPUs a local plan adds in turn (see ``sweep_every``): none on most events."""
        size = self.local_gpus
        if not size or not self.sweep_every or len(view.gpus) <= size:
            return []
        job = _turn_job(event, view)
        if job is None or job.seq % self.sweep_every:
            return []
        blocks = math.ceil(len(view.gpus) / size)
        b = (job.seq // self.sweep_every) % blocks
        return [g.index for g in view.gpus[b * size : (b + 1) * size]]

    def local_scope(
        self, view: ClusterView, eligible: Sequence[GpuView], touched: set[int], waiting: bool
    ) -> list[GpuView]:
        """The GPUs a local plan covers, at most ``local_gpus`` of ``eligible`` (in index
        order): those the event touched, then those with room (left under MPS with
        nothing on them, idle while jobs wait, or with a free instance), the emptiest
        first. Full GPUs the event did not touch are left to the sweeps (see
        ``sweep_every``): adding the least loaded to every plan, for newcomers to
        squeeze in, made more moves than it saved (measured before local plans used the
        cluster's backlog; big trace, first 1,000 jobs: mean JCT 1,108 s against
        1,083 s, migrations 1,194 against 998)."""
        limit = self.local_gpus or len(eligible)
        ranked: list[tuple[int, int, int, GpuView]] = []
        for g in eligible:
            full = g.mode == "mig" and g.layout.slices and len(g.jobs) >= len(g.layout.slices)
            if full and g.index not in touched:
                continue  # every instance taken (most GPUs, most events): no room
            n = len(_alive(view, g))
            free = g.free_slices() if g.mode == "mig" else []
            if g.index in touched:
                rank = 0
            elif n == 0 and g.mode != "mig":
                rank = 1  # left under MPS or whole: back to MIG (see _tidy)
            elif n == 0 and waiting:
                rank = 2  # idle: a newcomer takes it whole
            elif n and free:
                rank = 3  # a free instance: a newcomer, or a larger one for a running job
            else:
                continue
            ranked.append((rank, n - sum(s.slices for s in free), g.index, g))
        ranked.sort(key=lambda r: r[:3])
        chosen = [r[3] for r in ranked[:limit]]
        return sorted(chosen, key=lambda g: g.index)

    def queue_bound(self, view: ClusterView, gpus: Sequence[GpuView]) -> int:
        """How many waiting jobs, from the head of the queue, a plan of ``gpus`` weighs:
        as many as could start there (7 per GPU, fewer the jobs running) and one more per
        GPU, at least ``LOCAL_QUEUE``."""
        spare = sum(max(0, MAX_JOBS_PER_GPU - len(_alive(view, g))) for g in gpus)
        return max(spare + len(gpus), LOCAL_QUEUE)

    def profiling_pays(self, job: JobView, view: ClusterView, prior: SlicePrediction) -> str:
        """Why ``job`` should (``"profile: ..."``) or should not be profiled under MPS now.

        Profiling costs the job a checkpoint and restart onto MIG after the phase, and
        the phase itself runs at shares below a slice's speed; it pays only through a
        better choice of instance, which matters only when the job must share a GPU
        (with a GPU to itself it takes the whole GPU whatever its speeds) and is worth
        about its remaining time times how wrong the prior may be (its relative
        spread, of which a wrong choice loses a part, ``PROFILE_REGRET``). Otherwise
        the job starts on the prior and the engine learns its speed from its progress.

        A job whose length is not known (no step time yet: neither profiled nor
        measured, or no ``steps``) is not profiled: the gain cannot be weighed, and
        assuming a length (``default_remaining_s``) profiled short jobs for longer than
        they ran. Measured (``benchmarks/simulate.py``): on the quickstart queue,
        simulated, mean JCT 107.5 -> 71.7 s (nopart 60.2 s); on the generated traces
        of 8 GPUs, under both MPS models, no trace moves by more than 2 %, and every
        one stays within 1 % of the best baseline.
        """
        if job.remaining_steps is None or not (
            self._step_7g_s(job, prior) if self.measure else job.step_time_7g_s
        ):
            return "not profiled: its length is not known yet (starts on the prior, measured)"
        waiting = len(_queue_of(view))
        idle = len(_idle_gpus(view))
        if waiting <= idle:
            return f"not profiled: {waiting} waiting, {idle} idle GPUs (a whole GPU each)"
        remaining = self._remaining_s(job, prior)
        spread = [
            prior.uncertainty.get(c, 0.0) / r for c, r in prior.relative.items() if r and c < 7
        ]
        doubt = sum(spread) / len(spread) if spread else 0.0
        gain = remaining * doubt * PROFILE_REGRET
        cost = job.restart_cost_s + 0.5 * self.profile_s
        if gain > cost:
            return f"profile: expected gain {gain:.0f} s > cost {cost:.0f} s"
        return f"not profiled: expected gain {gain:.0f} s <= cost {cost:.0f} s (prior)"

    def _profile_idle(self, view: ClusterView) -> dict[int, GpuTarget]:
        """Profile waiting newcomers together on GPUs that run nothing (no job disturbed).

        Only the newcomers for which profiling pays (:meth:`profiling_pays`).
        """
        if not _idle_gpus(view):
            return {}  # nowhere to profile without disturbing a running job
        classes = sorted(
            {p.slices for g in view.gpus for p in g.model.standard_profiles()}, reverse=True
        )
        prior = _known_prior(view, classes)
        fresh = [
            j
            for j in _queue_of(view)
            if not j.profiled
            and j.prediction is None
            and self.profiling_pays(j, view, prior).startswith("profile")
        ]
        out: dict[int, GpuTarget] = {}
        for gpu in view.gpus:
            if not fresh:
                break
            if gpu.busy or gpu.profiling or _alive(view, gpu):
                continue
            # A group that can afterwards run side by side, one MIG instance each: the
            # plan after the phase must be able to keep every profiled job.
            group: list[JobView] = []
            for job in list(fresh):
                memories = tuple(j.memory_mb for j in group) + (job.memory_mb,)
                if len(group) < MAX_JOBS_PER_GPU and _fits_together(gpu.model, memories, ()):
                    group.append(job)
                    fresh.remove(job)
            if not group:
                continue
            out[gpu.index] = GpuTarget(
                gpu.index,
                "mps",
                assignment={j.name: None for j in group},
                mps_share={j.name: 100 for j in group},
                profile_s=self.profile_s,
                reason=f"GPU {gpu.index} idle: profile {', '.join(j.name for j in group)} "
                "under MPS while they run",
            )
        return out

    def _step_7g_s(self, job: JobView, pred: SlicePrediction) -> float | None:
        """Seconds per step on a whole GPU: from measured progress, else from the profile.

        From the largest instance the job was measured on, whichever it runs on now:
        the estimate must not change with a move (it did, by the prediction's error
        for that instance, and long jobs went back and forth between instances)."""
        seen = job.measured_step_s
        if seen:
            c = max(seen)
            rel = pred.relative.get(c)
            if rel:
                return seen[c] / rel
        return job.step_time_7g_s

    def _calibrated(self, job: JobView, pred: SlicePrediction) -> SlicePrediction:
        """``pred`` with the job's measured step times in place of its predictions, on
        the instances it was measured on (relative to the largest of them)."""
        seen = job.measured_step_s
        if not self.measure or not self.calibrate or len(seen) < 2:
            return pred
        step = self._step_7g_s(job, pred)
        if not step:
            return pred
        rel = dict(pred.relative)
        unc = dict(pred.uncertainty)
        for c, t in seen.items():
            if c in rel:
                rel[c] = t / step
                unc[c] = 0.0
        return SlicePrediction(rel, unc, source="measured")

    def _remaining_s(self, job: JobView, pred: SlicePrediction | None = None) -> float:
        steps = job.remaining_steps
        step = self._step_7g_s(job, pred) if (self.measure and pred is not None) else None
        step = step or job.step_time_7g_s
        if steps is not None and step:
            return steps * step
        return self.default_remaining_s

    def _replan(
        self,
        view: ClusterView,
        skip: set[int],
        exclude: set[str] | None = None,
        touched: set[int] | None = None,
        wide: bool = True,
        sweep: Sequence[int] = (),
    ) -> dict[int, GpuTarget]:
        gpus = [g for g in view.gpus if g.index not in skip and not g.busy and not g.profiling]
        if not gpus:
            return {}
        exclude = exclude or set()
        waiting = [j for j in _queue_of(view) if j.name not in exclude]
        if not wide:
            local = self.local_scope(view, gpus, touched or set(), bool(waiting))
            chosen = {g.index for g in local} | set(sweep)
            gpus = [g for g in gpus if g.index in chosen]
            if not gpus:
                return {}
        head = waiting[: self.queue_bound(view, gpus)]
        jobs = self.plan_jobs(view, gpus, exclude, touched, waiting=head, queued=len(waiting))
        if not jobs:
            return self._tidy(view, gpus)
        try:
            result = self._best_plan(view, gpus, jobs)
        except PlanError:  # pragma: no cover - a bug; tests/test_policy_property.py hunts it
            return {}  # nothing changes: the jobs that wait go on waiting
        prior = None
        if self.profile and any(view.jobs[n].prediction is None for n in result.placement()):
            classes = sorted(
                {p.slices for g in view.gpus for p in g.model.standard_profiles()}, reverse=True
            )
            prior = _known_prior(view, classes)
        out: dict[int, GpuTarget] = {}
        for gp in result.gpus:
            gpu = next(g for g in gpus if g.index == gp.index)
            current = {
                j: s
                for j, s in gpu.jobs.items()
                if j in view.jobs and view.jobs[j].state != "waiting"
            }
            assignment: dict[str, Slice | None] = dict(gp.assignment)
            if gpu.mode == "mig" and gp.layout == gpu.layout and assignment == current:
                continue
            if not gp.assignment and gpu.mode == "mig":
                continue  # nothing to run here: leave the instances as they are
            moved = [j for j in result.moved if j in gp.assignment]
            started = [j for j in gp.assignment if j not in current and j not in moved]
            parts = []
            if gpu.mode != "mig" or gp.layout != gpu.layout:
                parts.append(f"layout {gp.layout.name}")
            if started:
                parts.append("start " + ", ".join(started))
                for name in started:  # why a newcomer runs on the prior, unprofiled
                    if view.jobs[name].prediction is None and prior is not None:
                        why = self.profiling_pays(view.jobs[name], view, prior)
                        parts.append(f"{name} {why}")
            if moved:
                parts.append("move " + ", ".join(moved) + " (gain > restart cost)")
            out[gp.index] = GpuTarget(
                gp.index,
                "mig",
                layout=gp.layout,
                assignment=assignment,
                reason="; ".join(parts) or "re-plan",
            )
        return out

    def _best_plan(self, view: ClusterView, gpus: Sequence[GpuView], jobs: list[PlanJob]) -> Plan:
        """The plan that places the most jobs now, unless holding some back is predicted
        to lower the mean completion time.

        The planner places as many jobs as fit, which splits a GPU among short jobs
        that would finish sooner one after the other. Plans that start only the first
        k waiting jobs (k = 1, 2, 3 per GPU) are compared with it by the predicted
        mean completion time of every job (the held-back jobs take the instances that
        free first, in queue order), and so is starting nothing beside the running jobs;
        the lowest wins, ties to the fuller plan.
        Raises PlanError only on a bug: the model is feasible by construction (see
        plan_jobs): keeping every running job where it is, and starting nothing, is a plan.
        """
        plan_gpus = [
            PlanGpu(g.index, g.model, g.layout if g.mode == "mig" else Layout(())) for g in gpus
        ]

        def solve(subset: list[PlanJob]) -> Plan:
            # Starting jobs on instances being created costs a little: prefer fewer changes.
            return plan(
                plan_gpus,
                subset,
                objective=self.objective,
                fifo=False,
                risk=self.risk,
                reconfig_cost=1.0 if self.objective == "jct" else 1e-3,
                time_limit_s=self.plan_time_s,
            )

        best = solve(jobs)
        waiting = [j for j in jobs if j.waiting]
        if not self.hold_back or len(waiting) < 2:
            return best
        truth = self._unweighted(view, jobs)
        best_jct = estimate_mean_jct(best, truth)
        if best_jct is None:
            return best
        others = [j for j in jobs if not j.waiting]
        if len(others) > len(gpus):
            # issue-12: a cluster already shared beyond a job per GPU is under load that
            # the estimate (no later arrivals) misjudges: holding back only lengthens the
            # queue (heavy suite trace: mean JCT 1,187 s with it, 998 s without).
            return best
        # k = 0: start nothing new beside the running jobs (when some run).
        sizes = {len(gpus) * m for m in (1, 2, 3)} | ({0} if others else set())
        for k in sorted(sizes):
            if k >= len(waiting) or k >= len(best.placement()) - len(others):
                continue
            held = [j.name for j in waiting[k:]]
            trial = solve(others + waiting[:k])
            trial = replace(trial, waiting=trial.waiting + held)
            jct = estimate_mean_jct(trial, truth)
            if jct is not None and jct < best_jct * (1.0 - HOLD_BACK_GAIN):
                best, best_jct = trial, jct
        return best

    def _unweighted(self, view: ClusterView, jobs: list[PlanJob]) -> list[PlanJob]:
        """``jobs`` with their predicted remaining seconds and restart costs, unweighted."""
        out = []
        for pj in jobs:
            job = view.jobs[pj.name]
            pred = job.prediction or SlicePrediction(dict(pj.relative), dict(pj.uncertainty))
            out.append(
                replace(
                    pj,
                    remaining_s=self._remaining_s(job, pred),
                    restart_cost_s=job.restart_cost_s,
                )
            )
        return out

    def horizon_s(self, view: ClusterView) -> float:
        """How long a plan is expected to last on a GPU: the mean time between arrivals
        per GPU, from the latest arrivals among the jobs in the system (inf: none yet)."""
        # The jobs in the system (their cost, not every job seen): waiting and on a GPU.
        names = {n for g in view.gpus for n in g.jobs} | {j.name for j in _queue_of(view)}
        recent = sorted(
            (
                view.jobs[n].arrival_s
                for n in names
                if n in view.jobs and view.jobs[n].arrival_s <= view.now
            ),
            reverse=True,
        )[:HORIZON_ARRIVALS]
        if len(recent) < 2:
            return math.inf
        span = max(view.now - recent[-1], 1.0)
        return span * len(view.gpus) / len(recent)

    def plan_jobs(
        self,
        view: ClusterView,
        gpus: Sequence[GpuView],
        exclude: set[str] | None = None,
        touched: set[int] | None = None,
        waiting: Sequence[JobView] | None = None,
        queued: int | None = None,
    ) -> list[PlanJob]:
        """The running jobs on ``gpus`` and the waiting ones as the planner should see them.

        ``exclude``: waiting jobs that are being profiled now (they have a GPU already).
        ``touched``: the GPUs the event concerns (None: all); moves of jobs on the others
        cost ``local_factor`` times more.
        ``waiting``: the waiting jobs the plan weighs (None: the whole queue but
        ``exclude``), the head of a queue of ``queued`` jobs. When ``gpus`` are a part
        of the cluster (a local plan), the backlog per GPU and the wait for an instance
        to free are still the cluster's (its running jobs on GPUs not being changed).
        """
        indices = {g.index for g in gpus}
        model_classes = sorted(
            {p.slices for g in gpus for p in g.model.standard_profiles()}, reverse=True
        )
        prior = _known_prior(view, model_classes)
        jobs: list[PlanJob] = []
        running: list[JobView] = []
        for g in gpus:
            running.extend(_alive(view, g))
        # Newcomers being profiled now are on their GPU under MPS, not in the queue; the
        # others without a prediction run on the prior (profiling would not pay).
        if waiting is None:
            waiting = [j for j in _queue_of(view) if j.name not in (exclude or set())]
        waiting = list(waiting)
        queued = len(waiting) if queued is None else max(queued, len(waiting))
        remainings = {
            j.name: self._remaining_s(j, j.prediction or prior) for j in running + waiting
        }
        queue_s = sum(remainings[j.name] for j in waiting)
        if waiting and queued > len(waiting):
            queue_s *= queued / len(waiting)  # the rest of the queue, like its head
        # The backlog per GPU and a newcomer's wait for an instance are the cluster's,
        # whatever part of it the plan covers: judged on the part alone, a long job on
        # a GPU of its own was no longer long enough to keep its instance, and a
        # newcomer's wait was that GPU's next finish, so local plans squeezed jobs in
        # (800 jobs / 64 GPUs: mean JCT 966 s, 32 s of restarts per job; with the
        # cluster's running jobs, 923 s and 12 s, as whole-cluster plans: 925 s, 36 s).
        ahead = running
        ahead_s = remainings
        if len(gpus) < len(view.gpus):
            ahead = [
                job
                for g in view.gpus
                if not g.busy and not g.profiling
                for job in _alive_unsorted(view, g)
            ]
            ahead_s = {j.name: self._remaining_s(j, j.prediction or prior) for j in ahead}
            ahead_s.update(remainings)
        backlog = (sum(ahead_s[j.name] for j in ahead) + queue_s) / len(view.gpus)
        horizon = self.horizon_s(view) if self.horizon else math.inf
        freeing = self._freeing(ahead, ahead_s, prior, queued) if self.price else None
        for job in running + waiting:
            pred = self._calibrated(job, job.prediction or prior)
            where = None
            if job.gpu in indices and job.slice is not None:
                where = job.slice
            # A running job must be placed only where it can stay (its instance, which
            # the current layout keeps, suits its prediction and memory): then leaving
            # everything as it is always is a plan. A job under MPS (no instance), or
            # on an instance it does not suit, may go back to the queue.
            home = next((g for g in gpus if g.index == job.gpu), None)
            can_stay = (
                where is not None
                and home is not None
                and home.mode == "mig"
                and where in home.layout.slices
                and PlanJob(job.name, pred.relative, memory_mb=job.memory_mb).fits(
                    home.model, where.slices
                )
            )
            if not can_stay:
                where = None
            remaining = remainings[job.name]
            # The planner's cost is restart + remaining x relative step time; scaling both
            # by the weight keeps a move worth making exactly when it saves more time
            # than it costs, and sets how jobs compete for large instances.
            power = self.weight_power
            if self.critical and remaining >= self.critical * backlog:
                power = 1.0
            weight = (max(remaining, 1.0) / self.default_remaining_s) ** (power - 1.0)
            restart = job.restart_cost_s * self.move_factor if job.checkpointable else 1e9
            planned = remaining
            if where is not None:
                # Where a running job runs matters only until the next re-plan of its
                # GPU: a move (or a squeeze onto a smaller instance) gains or loses over
                # the horizon, not over the whole remaining run.
                planned = min(remaining, horizon)
                if touched is not None and job.gpu not in touched:
                    restart *= self.local_factor
            wait_cost = None
            if freeing is not None and job.state == "waiting":
                wait_s, cls = freeing
                wait_s *= self.wait_scale
                probe = PlanJob(job.name, pred.relative, pred.uncertainty, memory_mb=job.memory_mb)
                later = cls if probe.fits(home_model(view, gpus), cls) else 7
                if later in pred.relative:
                    wait_cost = weight * (wait_s + remaining * effective(probe, later, self.risk))
            placed = getattr(job, "placed_s", None)  # when the driver says (see __init__)
            settling = (
                where is not None
                and self.min_residence_s > 0
                and placed is not None
                and view.now - placed < self.min_residence_s
            )
            jobs.append(
                PlanJob(
                    job.name,
                    dict(pred.relative),
                    dict(pred.uncertainty),
                    memory_mb=job.memory_mb,
                    remaining_s=planned * weight,
                    restart_cost_s=restart * weight if job.checkpointable else 1e9,
                    gpu=job.gpu if where is not None else None,
                    slice=where,
                    required=job.state in ("running", "profiling") and can_stay,
                    pinned=settling,
                    waiting=job.state == "waiting",
                    wait_cost=wait_cost,
                )
            )
        return jobs

    def _freeing(
        self,
        running: Sequence[JobView],
        remainings: dict[str, float],
        prior: SlicePrediction,
        waiting: int,
    ) -> tuple[float, int] | None:
        """When a waiting job that is not started now would start (before ``wait_scale``),
        and on what size of instance: the instance whose job finishes ``waiting``-th
        (running jobs in the order they are predicted to finish; beyond the last, the
        pace so far goes on). None: nothing runs on an instance (a newcomer must not wait
        for nothing)."""
        ends: list[tuple[float, int]] = []
        for job in running:
            if job.slice is None:
                continue
            rel = (job.prediction or prior).relative.get(job.slice.slices)
            if rel:
                ends.append((remainings[job.name] * rel, job.slice.slices))
        if not ends or not waiting:
            return None
        ends.sort()
        k = waiting
        if k <= len(ends):
            return ends[k - 1]
        t, cls = ends[-1]
        return t * k / len(ends), cls

    def _profilable(self, view: ClusterView) -> bool:
        """Whether some GPU could profile newcomers without disturbing a running job."""
        return any(not g.busy and not g.profiling and not _alive(view, g) for g in view.gpus)

    def _tidy(self, view: ClusterView, gpus: list[GpuView]) -> dict[int, GpuTarget]:
        out: dict[int, GpuTarget] = {}
        for g in gpus:
            if g.mode == "mps" and not _alive(view, g):
                out[g.index] = GpuTarget(
                    g.index, "mig", layout=_full_layout(g.model), reason="idle after profiling"
                )
        return out


# The queue of the view being decided on, and its idle GPUs: one decision asks for them
# several times, and sorting the queue costs in proportion to it. Kept with the view, so
# that its id is not reused.
_QUEUE_MEMO: dict[str, object] = {}


def _view_memo(view: ClusterView) -> dict[str, object]:
    key = (view.now, len(view.jobs), len(view.waiting) if view.waiting is not None else -1)
    if _QUEUE_MEMO.get("view") is not view or _QUEUE_MEMO.get("key") != key:
        _QUEUE_MEMO.clear()
        _QUEUE_MEMO.update(view=view, key=key)
    return _QUEUE_MEMO


def _turn_job(event: Event, view: ClusterView) -> JobView | None:
    """The job whose arrival, finish or failure ``event`` is, while jobs wait: the job
    whose sequence number decides a sweep or a whole-cluster plan (None: neither)."""
    if event.kind not in ("arrival", "finish", "failed") or event.job is None:
        return None
    if not _queue_of(view):
        return None  # nothing waits: a wider plan could only move running jobs
    return view.jobs.get(event.job)


def _queue_of(view: ClusterView) -> list[JobView]:
    """``view.queue()``, sorted once per view (do not modify: shared)."""
    memo = _view_memo(view)
    if "queue" not in memo:
        memo["queue"] = view.queue()
    queue = memo["queue"]
    assert isinstance(queue, list)
    return queue


def _idle_gpus(view: ClusterView) -> list[GpuView]:
    """The GPUs that run nothing and are not being changed or profiled."""
    memo = _view_memo(view)
    if "idle" not in memo:
        memo["idle"] = [
            g for g in view.gpus if not g.busy and not g.profiling and not _alive_unsorted(view, g)
        ]
    idle = memo["idle"]
    assert isinstance(idle, list)
    return idle


# The profiled jobs of a run, per jobs mapping (the driver keeps one for the run): a job is
# profiled while it is on a GPU, so after one full reading only the jobs on a GPU or
# waiting are read again, not every job the run has seen (issue 12: at 5,000 jobs that
# reading cost more than the plans).
_KNOWN: dict[str, object] = {}


def _known_prior(view: ClusterView, classes: Sequence[int]) -> SlicePrediction:
    """:func:`prior_prediction` of ``view``'s jobs, read incrementally (see ``_KNOWN``)."""
    memo = _view_memo(view)
    key = ("prior", tuple(classes))
    got = memo.get(key)
    if isinstance(got, SlicePrediction):
        return got
    jobs = view.jobs
    known = _KNOWN.get("known")
    if _KNOWN.get("jobs") is not jobs or not isinstance(known, dict):
        known = {n: j for n, j in jobs.items() if j.prediction is not None and j.profiled}
        _KNOWN.update(jobs=jobs, known=known)
    else:
        active = [n for g in view.gpus for n in g.jobs] + [j.name for j in _queue_of(view)]
        for n in active:
            j = jobs.get(n)
            if j is not None and j.prediction is not None and j.profiled:
                known[n] = j
    prior = prior_prediction(known.values(), classes)
    memo[key] = prior
    return prior
