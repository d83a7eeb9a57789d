"""The virtual-clock driver of :mod:`miso_cli.policy.core`: replay a trace under a policy.

The simulator owns time and effects; the policy only sees a
:class:`~miso_cli.policy.core.ClusterView` and returns
:class:`~miso_cli.policy.core.GpuTarget` s, exactly as under ``miso run``.

What it models:

* speed: a job's step time is the catalog's on its MIG instance (``mig_<g>g``),
  on a whole GPU its ``mig_7g``, under MPS the simulated GPU's MPS model
  (:func:`miso_cli.gpu.sim.simmps.step_time_ms`: the share and the co-runners);
* memory: a job whose catalog entry for a size is empty does not fit it; a
  policy that starts it there sees it fail to start (out of memory) and requeued;
* checkpoint/restart: a running job whose instance changes (a *migration*), or
  that is requeued and later resumed, makes no progress for its restart cost
  (30 s by default; ``restart_costs="paper"`` uses the MISO paper's measured
  per-family costs: BERT 18, CycleGAN 44, DeepSpeech2 14, embedding 4, GNN 5,
  MobileNet 7, ResNet 9, Transformer 5 s);
* reconfiguration: creating instances or switching a GPU's mode takes
  ``reconfig_s`` before the jobs on the new instances start; instances kept
  unchanged, and their jobs, are untouched (partial reconfiguration); what is
  kept, restarted and counted follows :mod:`miso_cli.engine.rules`, as in
  ``miso run`` (a new MPS share is a restart);
* MPS profiling: a target with ``profile_s`` runs the GPU's jobs together under
  MPS at 14 %, 50 % and 100 % for a third of the time each (they progress at
  those speeds; each new level restarts them, paying their restart cost), then
  reports ``profiled``; each job's measured step times, with
  ``profile_noise`` of relative measurement noise, become its prediction through
  the predictor, as ``miso profile`` + the fitted model would.

What a policy knows (its ``knowledge`` attribute): ``profile`` (predictions only
after profiling), ``oracle`` (true relative speeds from the catalog on arrival),
``none``. Every policy knows each job's memory need and declared work (steps).

Counting, as the core module defines it: a *reconfiguration* is a target that
changes a GPU's mode or MIG layout; a *migration* is a running job checkpointed
and restarted elsewhere (another instance, GPU or mode).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.engine import rules
from miso_cli.engine.measure import ProgressMeter, measure_view
from miso_cli.engine.rules import PROFILE_LEVELS, PROFILE_ORDER
from miso_cli.errors import BadInput, MisoError
from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.gpu.profiles import GpuModel
from miso_cli.policy.core import (
    ClusterView,
    Event,
    GpuTarget,
    GpuView,
    JobView,
    Policy,
    SlicePrediction,
)
from miso_cli.spec.catalog import Catalog, Workload

# Checkpoint + restore seconds per workload family, measured in the MISO paper (Li et al.,
# SoCC 2022, artifact boringlee24/socc22-miso).
PAPER_RESTART_COSTS_S = {
    "bert": 18.0,
    "cyclegan": 44.0,
    "deepspeech2": 14.0,
    "deepspeech": 14.0,
    "embedding": 4.0,
    "gnn": 5.0,
    "mobilenet": 7.0,
    "resnet": 9.0,
    "transformer": 5.0,
}
DEFAULT_RESTART_S = 30.0


class SimulationError(MisoError):
    """A policy asked for something impossible, or left jobs waiting forever."""

    code = "SIMULATION"


@dataclass(frozen=True)
class TraceJob:
    name: str
    arrival_s: float
    workload: str
    duration_7g_s: float


def load_trace(path: Path | str, catalog: Catalog) -> list[TraceJob]:
    """Read a trace CSV (``job,arrival_s,workload,duration_7g_s``); errors name file and line."""
    from miso_cli.spec.textfile import csv_reader

    path = Path(path)
    need = ("job", "arrival_s", "workload", "duration_7g_s")
    out: list[TraceJob] = []
    seen: set[str] = set()
    with csv_reader(path, "trace") as reader:
        fields = reader.fieldnames or []
        missing = [c for c in need if c not in fields]
        if missing:
            raise BadInput(
                f"{path}:1: trace needs columns {', '.join(need)} (missing: {', '.join(missing)})"
            )
        for row in reader:
            line = reader.line_num
            name = (row.get("job") or "").strip()
            if not name:
                raise BadInput(f"{path}:{line}: column job: empty")
            if name in seen:
                raise BadInput(f"{path}:{line}: job {name!r} appears twice")
            seen.add(name)
            arrival = _float(path, line, "arrival_s", row.get("arrival_s"))
            if arrival < 0:
                raise BadInput(f"{path}:{line}: column arrival_s: must be >= 0, got {arrival:g}")
            duration = _float(path, line, "duration_7g_s", row.get("duration_7g_s"))
            if duration <= 0:
                raise BadInput(
                    f"{path}:{line}: column duration_7g_s: must be positive, got {duration:g}"
                )
            workload = (row.get("workload") or "").strip()
            if workload not in catalog:
                where = f" {catalog.path}" if catalog.path else " the catalog"
                raise BadInput(
                    f"{path}:{line}: column workload: {workload!r} is not in{where}",
                    hint="every trace workload needs a catalog row",
                )
            if catalog[workload].step_time_ms(7) is None:
                raise BadInput(f"{path}:{line}: workload {workload!r} has no mig_7g step time")
            out.append(TraceJob(name, arrival, workload, duration))
    if not out:
        raise BadInput(f"{path}: trace has no jobs")
    out.sort(key=lambda j: (j.arrival_s, j.name))
    return out


def _float(path: Path, line: int, column: str, text: str | None) -> float:
    text = (text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{path}:{line}: column {column}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadInput(f"{path}:{line}: column {column}: {text!r} is not a finite number")
    return value


def restart_cost_for(workload: Workload, costs: str | float | Mapping[str, float]) -> float:
    """Checkpoint/restart seconds for ``workload``: a constant, ``"paper"``, or per family."""
    if isinstance(costs, (int, float)):
        return float(costs)
    table: Mapping[str, float] = PAPER_RESTART_COSTS_S if costs == "paper" else costs  # type: ignore[assignment]
    if isinstance(table, str):
        raise ValueError(f"unknown restart cost table {costs!r}")
    return float(table.get(workload.family, table.get(workload.name, DEFAULT_RESTART_S)))


def mps_step_time_ms(
    workload: Workload,
    pct: float,
    co_runners: list[tuple[Workload, float]],
    model: str = "optimistic",  # issue-12: simmps.MPS_MODELS
) -> float:
    """A job's step time under MPS at ``pct`` with co-runners, from the simulated GPU's model."""
    try:
        from miso_cli.gpu.sim import simmps
    except ImportError:  # the solo curve when the interference model is not installed
        return workload.mps_step_time_ms(pct)
    return simmps.step_time_ms(workload, pct, co_runners, model)


def memory_need_mb(workload: Workload, model: GpuModel) -> float:
    """A memory need consistent with which instances of ``model`` the workload fits
    (the catalog's empties, read as :meth:`Workload.memory_need_mb` reads them)."""
    return workload.memory_need_mb(model.key)


@dataclass
class SimConfig:
    restart_costs: str | float | Mapping[str, float] = DEFAULT_RESTART_S
    reconfig_s: float = 5.0
    profile_noise: float = 0.02  # relative std. dev. of measured MPS step times
    seed: int = 0
    max_events: int = 200_000
    mps_model: str = "optimistic"  # issue-12: gpu/simmps.py MPS_MODELS


@dataclass
class JobRecord:
    name: str
    workload: str
    arrival_s: float
    start_s: float | None = None
    finish_s: float | None = None
    migrations: int = 0
    restarts: int = 0
    oom: int = 0

    @property
    def jct_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.start_s is None else max(0.0, self.start_s - self.arrival_s)


@dataclass
class SimResult:
    policy: str
    jobs: list[JobRecord]
    reconfigurations: int
    migrations: int
    restart_overhead_s: float
    oom_starts: int
    busy_slice_s: float  # compute-slice seconds occupied by a job
    capacity_slices: int
    decisions: int
    # Every target carried out, in order: time, GPU, mode, layout, job -> instance key.
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def makespan_s(self) -> float:
        return max((j.finish_s or 0.0) for j in self.jobs)

    def summary(self) -> dict[str, Any]:
        jct = sorted(j.jct_s for j in self.jobs if j.jct_s is not None)
        queue = [j.queue_s for j in self.jobs if j.queue_s is not None]
        makespan = self.makespan_s
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "mean_jct_s": sum(jct) / len(jct) if jct else None,
            "p95_jct_s": _percentile(jct, 95) if jct else None,
            "mean_queue_s": sum(queue) / len(queue) if queue else None,
            "makespan_s": makespan,
            "reconfigurations": self.reconfigurations,
            "migrations": self.migrations,
            "restart_overhead_s": self.restart_overhead_s,
            "oom_starts": self.oom_starts,
            "slice_utilisation": (
                self.busy_slice_s / (self.capacity_slices * makespan) if makespan > 0 else None
            ),
        }


def target_record(now: float, target: GpuTarget) -> dict[str, Any]:
    """A target as both drivers log it (``miso run`` in its journal's decisions)."""
    return {
        "time": round(now, 3),
        "gpu": target.gpu,
        "mode": target.mode,
        "layout": target.layout.name if target.mode == "mig" else None,
        "assignment": {j: (s.key if s is not None else None) for j, s in target.assignment.items()},
        "profile_s": target.profile_s,
        "reason": target.reason,
    }


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


Predict = Callable[[dict[int, float], list[dict[int, float]], float | None], SlicePrediction]


@dataclass
class _Job:
    trace: TraceJob
    workload: Workload
    total_steps: float
    memory_mb: float
    restart_cost_s: float
    record: JobRecord
    state: str = "pending"  # pending (not arrived), waiting, running, profiling, finished
    done: float = 0.0
    gpu: int | None = None
    slice: Slice | None = None
    paused_until: float = 0.0
    prediction: SlicePrediction | None = None
    profiled: bool = False
    step_time_7g_s: float | None = None
    rate: float = 0.0  # steps per second now (0 while paused)


@dataclass
class _Gpu:
    index: int
    model: GpuModel
    mode: str = "full"
    layout: Layout = field(default_factory=lambda: Layout(()))
    jobs: dict[str, Slice | None] = field(default_factory=dict)
    shares: dict[str, int] = field(default_factory=dict)
    busy_until: float = 0.0
    profile_start: float | None = None
    profile_end: float | None = None
    profile_level: int | None = None  # the level the phase's jobs were started at


class Simulator:
    """One run of one policy over one trace. Use :func:`simulate`."""

    def __init__(
        self,
        trace: Sequence[TraceJob],
        catalog: Catalog,
        gpus: Sequence[GpuModel],
        policy: Policy,
        *,
        predict: Predict | None = None,
        config: SimConfig | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.policy = policy
        self.knowledge = getattr(policy, "knowledge", "none")
        if self.knowledge == "profile" and predict is None:
            raise ValueError(f"policy {policy.name} needs a predictor")
        self.predict = predict
        self.rng = random.Random(self.config.seed)
        self.gpus = [_Gpu(i, m) for i, m in enumerate(gpus)]
        if not self.gpus:
            raise ValueError("no GPUs to simulate")
        self.jobs: dict[str, _Job] = {}
        self.seq: dict[str, int] = {}
        self.meter = ProgressMeter()
        self._views: dict[str, JobView] = {}  # arrived jobs as the policy sees them
        self._prev_active: set[str] = set()
        self._arrived: set[str] = set()
        self._touched: set[str] = set()
        self._waiting: set[str] = set()  # names of the waiting jobs, kept as views are built
        for t in trace:
            self.seq[t.name] = len(self.seq)
            w = catalog[t.workload]
            step_7g_s = (w.step_time_ms(7) or 0.0) / 1000.0
            self.jobs[t.name] = _Job(
                trace=t,
                workload=w,
                total_steps=t.duration_7g_s / step_7g_s,
                memory_mb=w.memory_need_mb(),  # the job's need: the same on every GPU
                restart_cost_s=restart_cost_for(w, self.config.restart_costs),
                record=JobRecord(t.name, t.workload, t.arrival_s),
            )
        self.now = 0.0
        self.reconfigurations = 0
        self.migrations = 0
        self.restart_overhead_s = 0.0
        self.oom_starts = 0
        self.busy_slice_s = 0.0
        self.decisions = 0
        self.targets: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ the view

    def view(self) -> ClusterView:
        gviews = []
        for g in self.gpus:
            gviews.append(
                GpuView(
                    index=g.index,
                    model=g.model,
                    mode=g.mode,  # type: ignore[arg-type]
                    layout=g.layout,
                    jobs=dict(g.jobs),
                    profiling=g.profile_end is not None,
                    busy=False,
                )
            )
        # Incremental: only the jobs that can have changed since the last view are
        # rebuilt (those on a GPU then or now, and the newly arrived), so an event costs
        # in proportion to the active jobs, not to every job seen.
        active = {n for g in self.gpus for n in g.jobs}
        touched = active | self._prev_active | self._arrived
        self._prev_active = active
        self._arrived = set()
        jviews = self._views
        for name in touched:
            j = self.jobs[name]
            jviews[name] = JobView(
                name=j.trace.name,
                arrival_s=j.trace.arrival_s,
                state=j.state,  # type: ignore[arg-type]
                memory_mb=j.memory_mb,
                total_steps=j.total_steps,
                done_steps=j.done,
                step_time_7g_s=j.step_time_7g_s,
                restart_cost_s=j.restart_cost_s,
                gpu=j.gpu,
                slice=j.slice,
                prediction=j.prediction,
                profiled=j.profiled,
                workload=j.trace.workload,
                seq=self.seq[j.trace.name],
                measured_step_s=self.meter.of(name),
            )
            if j.state == "waiting":
                self._waiting.add(name)
            else:
                self._waiting.discard(name)
        self._touched = touched
        return ClusterView(self.now, gviews, jviews, waiting=set(self._waiting))

    # ------------------------------------------------------------------ speeds

    def _step_ms(self, j: _Job, g: _Gpu) -> float | None:
        if g.mode == "mig":
            assert j.slice is not None
            # Fit by the instance's real memory (an H100's 2g.20gb holds what missed the
            # A100's 2g.10gb), not by the catalog's column for the A100.
            mem = g.model.profile(j.slice.profile).memory_mb
            return j.workload.step_time_on(j.slice.slices, mem, j.memory_mb)
        if g.mode == "full":
            return j.workload.step_time_ms(7)
        pct = float(g.shares.get(j.trace.name, 100))
        level = self._profile_level(g)
        if level is not None:
            pct = float(level)
        co = [
            (self.jobs[o].workload, float(level if level is not None else g.shares.get(o, 100)))
            for o in g.jobs
            if o != j.trace.name and self.jobs[o].state in ("running", "profiling")
        ]
        return mps_step_time_ms(j.workload, pct, co, self.config.mps_model)

    def _profile_level(self, g: _Gpu) -> int | None:
        if g.profile_start is None or g.profile_end is None or self.now < g.profile_start:
            return None
        third = (g.profile_end - g.profile_start) / len(PROFILE_ORDER)
        k = min(int((self.now - g.profile_start) / third + 1e-9), len(PROFILE_ORDER) - 1)
        return PROFILE_ORDER[k]

    def _update_rates(self) -> None:
        for g in self.gpus:
            for name in g.jobs:
                j = self.jobs[name]
                if self.now < j.paused_until - 1e-9:
                    j.rate = 0.0
                    continue
                step = self._step_ms(j, g)
                j.rate = 0.0 if step is None else 1000.0 / step

    def _next_time(self, arrivals: list[tuple[float, str]]) -> float:
        t = math.inf
        if arrivals:
            t = arrivals[0][0]
        for g in self.gpus:
            if g.profile_start is not None and g.profile_end is not None:
                third = (g.profile_end - g.profile_start) / len(PROFILE_LEVELS)
                for k in range(len(PROFILE_LEVELS) + 1):
                    b = g.profile_start + k * third
                    if b > self.now + 1e-9:
                        t = min(t, b)
                        break
            for name in g.jobs:
                j = self.jobs[name]
                if j.paused_until > self.now + 1e-9:
                    t = min(t, j.paused_until)
                elif j.rate > 0:
                    t = min(t, self.now + max(0.0, j.total_steps - j.done) / j.rate)
        return t

    def _advance(self, t: float) -> None:
        dt = t - self.now
        if dt <= 0:
            return
        for g in self.gpus:
            occupied = 0
            for name, sl in g.jobs.items():
                j = self.jobs[name]
                j.done = min(j.total_steps, j.done + j.rate * dt)
                occupied = occupied + (sl.slices if sl is not None else 0)
            if g.jobs:
                if g.mode == "mig":
                    self.busy_slice_s += occupied * dt
                else:
                    self.busy_slice_s += g.model.compute_slices * dt
        self.now = t

    # ------------------------------------------------------------------ targets

    def _apply(self, target: GpuTarget) -> None:
        if not 0 <= target.gpu < len(self.gpus):
            raise SimulationError(f"policy {self.policy.name}: no GPU {target.gpu}")
        g = self.gpus[target.gpu]
        if g.profile_end is not None:
            raise SimulationError(
                f"policy {self.policy.name}: changed GPU {g.index} while it was profiling"
            )
        self._validate(g, target)
        self.decisions += 1
        self.targets.append(target_record(self.now, target))
        layout = target.layout if target.mode == "mig" else Layout(())
        reset = target.mode != g.mode
        if rules.is_reconfiguration(g.mode, g.layout, target):
            self.reconfigurations += 1
        running = {
            n: rules.Placed(j.gpu, j.slice, float(self.gpus[j.gpu].shares.get(n, 100)))
            for n, j in self._active()
        }
        stops = rules.moves(g.index, g.mode, target, running)
        kept_slices = set(g.layout.slices) & set(layout.slices) if not reset else set()
        # Jobs the target no longer lists go back to the queue (checkpointed).
        for name in list(g.jobs):
            if name not in target.assignment:
                j = self.jobs[name]
                if j.state in ("running", "profiling"):
                    j.state = "waiting"
                    j.record.restarts += 1
                j.gpu, j.slice = None, None
                del g.jobs[name]
        if target.mode == "mig":
            # Running jobs on instances that disappear lose them (they move below).
            for name, sl in list(g.jobs.items()):
                if sl not in kept_slices:
                    del g.jobs[name]
                    self.jobs[name].slice = None
        elif reset:
            for name in list(g.jobs):
                del g.jobs[name]
        created = set(layout.slices) - kept_slices
        delay = self.config.reconfig_s if (reset or created) else 0.0
        pauses: list[float] = []
        for name, sl in target.assignment.items():
            j = self.jobs.get(name)
            if j is None or j.state in ("pending", "finished"):
                raise SimulationError(
                    f"policy {self.policy.name}: assigned {name!r}, which is not in the system"
                )
            if name in g.jobs and g.jobs[name] == sl and not reset and name not in stops:
                continue  # same instance (or same MPS daemon and share): keeps running
            moving = j.state in ("running", "profiling")
            if moving:
                self._detach(j)
                self.migrations += 1
                j.record.migrations += 1
            if (
                target.mode == "mig"
                and sl is not None
                and j.workload.step_time_on(
                    sl.slices, g.model.profile(sl.profile).memory_mb, j.memory_mb
                )
                is None
            ):
                # Out of memory on start: the job is back in the queue, its progress kept.
                self.oom_starts += 1
                j.record.oom += 1
                j.state, j.gpu, j.slice = "waiting", None, None
                continue
            # No progress while it restores from its checkpoint and while its new
            # instance (or the GPU's new mode) is being set up.
            pause = 0.0
            if moving or j.done > 0:
                pause += j.restart_cost_s
                self.restart_overhead_s += j.restart_cost_s
            if reset or target.mode == "mps" or (sl is not None and sl in created):
                pause += delay
            pause += self.now
            j.paused_until = pause
            pauses.append(pause)
            j.state = "running"
            j.gpu, j.slice = g.index, sl if target.mode == "mig" else None
            if j.record.start_s is None:
                j.record.start_s = self.now
            g.jobs[name] = j.slice
            if target.mode == "mps":
                g.shares[name] = target.mps_share.get(name, 100)
        g.mode = target.mode
        g.layout = layout
        g.shares = {n: s for n, s in g.shares.items() if n in g.jobs}
        if target.profile_s:
            if target.mode != "mps":
                raise SimulationError(f"policy {self.policy.name}: profiling needs mode 'mps'")
            start = max(pauses + [self.now + delay])
            g.profile_start = start
            g.profile_end = start + float(target.profile_s)
            for name in g.jobs:
                self.jobs[name].state = "profiling"

    def _active(self) -> list[tuple[str, _Job]]:
        """The jobs on a GPU now (cost: the active jobs, not every job seen)."""
        return [(n, self.jobs[n]) for g in self.gpus for n in g.jobs]

    def _level_restarts(self) -> None:
        """A profiling phase that moves to its next level restarts its jobs (a new share)."""
        for g in self.gpus:
            level = self._profile_level(g)
            if level is None or level == g.profile_level:
                continue
            first = g.profile_level is None
            g.profile_level = level
            if first:
                continue  # the phase's own start: the target paid for it
            for name in g.jobs:
                j = self.jobs[name]
                j.paused_until = max(j.paused_until, self.now) + j.restart_cost_s
                self.restart_overhead_s += j.restart_cost_s
                j.record.restarts += 1

    def _detach(self, j: _Job) -> None:
        if j.gpu is not None:
            g = self.gpus[j.gpu]
            g.jobs.pop(j.trace.name, None)
            g.shares.pop(j.trace.name, None)
        j.gpu, j.slice = None, None

    def _validate(self, g: _Gpu, target: GpuTarget) -> None:
        try:
            rules.check_target(g.model, target, f"policy {self.policy.name}, GPU {g.index}")
        except rules.TargetError as exc:
            raise SimulationError(str(exc)) from None

    # ------------------------------------------------------------------ events

    def _profiled(self, g: _Gpu) -> None:
        names = [n for n in g.jobs if self.jobs[n].state == "profiling"]
        mix = [self.jobs[n].workload for n in names]
        measured: dict[str, dict[int, float]] = {}
        for n in names:
            j = self.jobs[n]
            prof = {}
            for level in PROFILE_LEVELS:
                co = [(w, float(level)) for o, w in zip(names, mix, strict=True) if o != n]
                t = mps_step_time_ms(j.workload, level, co, self.config.mps_model)
                noise = self.rng.gauss(1.0, self.config.profile_noise)
                prof[level] = t * max(noise, 0.5)
            measured[n] = prof
        for n in names:
            j = self.jobs[n]
            j.profiled = True
            j.state = "running"
            j.step_time_7g_s = measured[n][100] / 1000.0
            if self.knowledge == "profile" and self.predict is not None:
                others = [measured[o] for o in names if o != n]
                j.prediction = self.predict(measured[n], others, j.memory_mb)
        g.profile_start = None
        g.profile_end = None
        g.profile_level = None

    def _oracle(self, j: _Job) -> None:
        full = j.workload.step_time_ms(7)
        assert full is not None
        rel = {g: t / full for g, t in j.workload.mig_ms.items() if t is not None}
        j.prediction = SlicePrediction(rel, {}, source="oracle")
        j.profiled = True
        j.step_time_7g_s = full / 1000.0

    def _decide(self, event: Event) -> None:
        view = self.view()
        measure_view(self.meter, view, self._touched)
        targets = self.policy.decide(event, view)
        for t in targets:
            self._apply(t)
        # Jobs the targets placed are looked at again next time (requeued ones were
        # active at this view, so they are too).
        self._prev_active |= {n for g in self.gpus for n in g.jobs}
        self._update_rates()

    def run(self) -> SimResult:
        arrivals = sorted((j.trace.arrival_s, name) for name, j in self.jobs.items())
        heapq.heapify(arrivals)
        unfinished = len(self.jobs)
        steps = 0
        while unfinished:
            steps += 1
            if steps > self.config.max_events:
                raise SimulationError(f"policy {self.policy.name}: no end after {steps} events")
            self._update_rates()
            t = self._next_time(arrivals)
            if t == math.inf:
                waiting = [n for n, j in self.jobs.items() if j.state == "waiting"]
                raise SimulationError(
                    f"policy {self.policy.name} left {len(waiting)} job(s) waiting with "
                    f"nothing running (first: {waiting[0] if waiting else '?'})",
                    hint="a job may fit no instance the policy offers",
                )
            self._advance(t)
            self._level_restarts()
            events: list[Event] = []
            for g in self.gpus:
                for name in list(g.jobs):
                    j = self.jobs[name]
                    if j.done >= j.total_steps - 1e-6 and j.paused_until <= self.now + 1e-9:
                        j.state = "finished"
                        j.record.finish_s = self.now
                        del g.jobs[name]
                        g.shares.pop(name, None)
                        j.gpu, j.slice = None, None
                        unfinished -= 1
                        events.append(Event("finish", job=name, gpu=g.index))
            for g in self.gpus:  # rules.EVENT_ORDER: finishes, then profiles, then arrivals
                if g.profile_end is not None and g.profile_end <= self.now + 1e-9:
                    self._profiled(g)
                    events.append(Event("profiled", gpu=g.index))
            while arrivals and arrivals[0][0] <= self.now + 1e-9:
                _, name = heapq.heappop(arrivals)
                j = self.jobs[name]
                j.state = "waiting"
                self._arrived.add(name)
                if self.knowledge == "oracle":
                    self._oracle(j)
                events.append(Event("arrival", job=name))
            for ev in events:
                self._decide(ev)
        return SimResult(
            policy=self.policy.name,
            jobs=[j.record for j in self.jobs.values()],
            reconfigurations=self.reconfigurations,
            migrations=self.migrations,
            restart_overhead_s=self.restart_overhead_s,
            oom_starts=self.oom_starts,
            busy_slice_s=self.busy_slice_s,
            capacity_slices=sum(g.model.compute_slices for g in self.gpus),
            decisions=self.decisions,
            targets=self.targets,
        )


def simulate(
    trace: Sequence[TraceJob],
    catalog: Catalog,
    gpus: Sequence[GpuModel],
    policy: Policy,
    *,
    predict: Predict | None = None,
    config: SimConfig | None = None,
) -> SimResult:
    """Replay ``trace`` on ``gpus`` under ``policy``; deterministic for ``config.seed``."""
    return Simulator(trace, catalog, gpus, policy, predict=predict, config=config).run()


def make_predict(
    model_path: Path | None, gpu_model: GpuModel, state_dir: Path | None = None
) -> tuple[Predict, dict[str, Any]]:
    """Turn measured MPS profiles into predictions with the fitted model (or the prior).

    Returns the callable the simulator uses and the predictor's metadata. Predictions
    are cached per (profile, mix, memory): a trace repeats workloads.
    """
    try:
        from miso_cli.predict import load_predictor
    except ImportError as exc:
        raise MisoError(
            f"the predictor is not available ({exc})",
            hint="policies nopart, static, mps and oracle run without one",
        ) from None
    pred = load_predictor(model_path, gpu_model.key, state_dir)
    cache: dict[tuple[object, ...], SlicePrediction] = {}

    def predict(
        profile: dict[int, float], mix: list[dict[int, float]], memory_mb: float | None
    ) -> SlicePrediction:
        key = (
            tuple(sorted(profile.items())),
            tuple(sorted(tuple(sorted(m.items())) for m in mix)),
            memory_mb,
        )
        if key not in cache:
            cache[key] = pred.predict_one(
                profile,
                jobs_in_mix=1 + len(mix),
                mix=mix or None,
                memory_mb=memory_mb,
                gpu_model=gpu_model,
            )
        return cache[key]

    meta = dict(getattr(pred, "metadata", {}) or {})
    return predict, meta
