"""The scheduling engine: facts in, actions out, no clock, no processes, no I/O.

``miso run`` (:mod:`miso_cli.runtime.executor`: processes on real or simulated GPUs, a
wall clock) and ``miso simulate`` (:mod:`miso_cli.sim.simulator`: catalog-paced jobs on a
virtual clock) are two backends of this one :class:`Engine`. A backend tells the engine
what happened (:class:`Arrived`, :class:`Ended`, :class:`Profiled`, progress through
:meth:`Engine.progress`) at an instant it passes in, and carries out the
:class:`Action` s it gets back. The engine owns every decision between the two:

* the event order within one instant (:data:`~miso_cli.engine.rules.EVENT_ORDER`) and
  asking the policy; a ``tick`` when something changed that the policy has not seen
  (a job back in the queue after it ran out of memory or drained, a GPU no longer busy);
* target validation (:func:`~miso_cli.engine.rules.check_target`) before any job stops;
* reconciliation of a target with what is there (:func:`~miso_cli.engine.rules.moves`):
  kept instances, reconfigurations, migrations, requeues; a GPU is *busy* while the jobs
  its target stops drain (the simulator's stops complete at once, ``miso run``'s when the
  job's process has checkpointed and exited);
* out of memory on start: a job whose memory need exceeds its instance's goes back to the
  queue, its progress kept (it is never started there);
* jobs that can never be placed: when nothing runs, drains, profiles or changes and the
  policy, asked again, starts none of the waiting jobs, they fail with one reason;
* MPS profiling phases: levels in :data:`~miso_cli.engine.rules.PROFILE_ORDER`, each
  ``profile_s / levels`` long from when its jobs run, each level after the first a restart;
* the restart pause a start pays (its restart cost when it resumes from a checkpoint,
  plus the setup time of a new instance or mode) and the restart cost told to the policy;
* the metrics (:func:`summary`): mean and p95 JCT, queueing, makespan, reconfigurations,
  migrations, restart overhead, out-of-memory starts, slice utilisation.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from miso_cli.engine import rules
from miso_cli.engine.measure import ProgressMeter
from miso_cli.engine.rules import PROFILE_ORDER, TargetError
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

__all__ = [
    "Action",
    "Arrived",
    "Engine",
    "EngineJob",
    "JobTimes",
    "Ended",
    "Fail",
    "Note",
    "Profiled",
    "Reconfigure",
    "Start",
    "Stop",
    "TargetError",
    "summary",
]

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
EPS = 1e-9
MAX_LEVEL_FACTOR = 6.0  # a profiling level ends at this many times its length regardless

JobState = Literal["pending", "waiting", "running", "profiling", "draining", "finished", "failed"]
Outcome = Literal["finished", "failed", "stopped", "requeued", "oom"]


def restart_cost_s(
    family: str | None, name: str | None, costs: str | float | Mapping[str, float]
) -> float:
    """The restart cost (checkpoint + restore seconds) the engine charges and tells the policy.

    ``costs``: one figure for every job, ``"paper"`` (the MISO paper's per-family table),
    or a table by family or workload name (a job in neither pays the default 30 s).
    """
    if isinstance(costs, (int, float)):
        return float(costs)
    if isinstance(costs, str):
        if costs != "paper":
            raise ValueError(f"unknown restart cost table {costs!r}")
        costs = PAPER_RESTART_COSTS_S
    if family is not None and family in costs:
        return float(costs[family])
    if name is not None and name in costs:
        return float(costs[name])
    return DEFAULT_RESTART_S


def fits_instance(model: GpuModel, sl: Slice | None, memory_mb: float | None) -> bool:
    """Whether a job that needs ``memory_mb`` starts on ``sl`` of a ``model`` GPU (the rule
    for out of memory on start; a whole GPU or an unknown need always starts)."""
    if sl is None or memory_mb is None:
        return True
    return memory_mb <= model.profile(sl.profile).memory_mb + EPS


# ---------------------------------------------------------------- facts in


@dataclass(frozen=True)
class Arrived:
    job: str


@dataclass(frozen=True)
class Ended:
    """A job's process (or virtual job) ended: ``finished``, ``failed`` (for good),
    ``stopped`` (it checkpointed as asked), ``requeued`` (to be retried), ``oom``."""

    job: str
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True)
class Profiled:
    """What a profiling phase measured: job -> MPS level -> seconds (or ms) per step."""

    gpu: int
    measured: Mapping[str, Mapping[int, float]]


Fact = Arrived | Ended | Profiled


# ---------------------------------------------------------------- actions out


@dataclass(frozen=True)
class Stop:
    """Ask ``job`` to checkpoint and stop (``requeue``, ``migrate`` or ``level``) for the
    target (or the profiling phase) of GPU ``gpu``."""

    job: str
    reason: str
    gpu: int | None


@dataclass(frozen=True)
class Reconfigure:
    """Make GPU ``gpu`` run in ``mode`` (with ``layout`` under MIG); ``created`` the new
    instances, ``changed`` whether the mode or layout differs from what was there."""

    gpu: int
    mode: str
    layout: Layout
    created: frozenset[Slice]
    changed: bool
    reason: str
    profile_s: float | None = None
    wanted: tuple[str, ...] = ()  # the jobs the target puts on it


@dataclass(frozen=True)
class Start:
    """Start (or resume) ``job`` on GPU ``gpu``, instance ``slice`` (None: whole GPU or MPS),
    with MPS share ``share``; it makes no progress for ``pause_s`` (restore + setup)."""

    job: str
    gpu: int
    slice: Slice | None
    share: int | None
    pause_s: float
    resume: bool
    level: int | None = None  # the profiling level it starts at


@dataclass(frozen=True)
class Fail:
    job: str
    reason: str


@dataclass(frozen=True)
class EndLevel:
    """A profiling level of GPU ``gpu`` is over: measure ``level`` for ``jobs`` now."""

    gpu: int
    level: int
    jobs: tuple[str, ...]


@dataclass(frozen=True)
class CollectProfile:
    """The profiling phase of GPU ``gpu`` is over: report what it measured (:class:`Profiled`)."""

    gpu: int
    jobs: tuple[str, ...]


@dataclass(frozen=True)
class Note:
    """A fact worth journaling (a decision, a cancelled phase, an out-of-memory start)."""

    kind: str
    fields: Mapping[str, Any]


Action = Stop | Reconfigure | Start | Fail | EndLevel | CollectProfile | Note


# ---------------------------------------------------------------- state


class JobTimes:
    """A job's completion and queueing time from its arrival, start and finish (seconds).

    Mixed into the engine's jobs and the simulator's records, which carry the three.
    """

    arrival_s: float
    start_s: float | None
    finish_s: float | None

    @property
    def jct_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.start_s is None else max(0.0, self.start_s - self.arrival_s)


@dataclass
class EngineJob(JobTimes):
    """One job as the engine tracks it (what the policy sees, plus its record)."""

    name: str
    arrival_s: float
    seq: int
    total_steps: float | None = None
    memory_mb: float | None = None
    restart_cost_s: float = DEFAULT_RESTART_S
    priority: int = 0
    checkpointable: bool = True
    workload: str | None = None
    state: JobState = "pending"
    done: float = 0.0
    gpu: int | None = None
    slice: Slice | None = None
    share: int | None = None
    prediction: SlicePrediction | None = None
    profiled: bool = False
    step_time_7g_s: float | None = None
    stop_for: str | None = None  # while draining: requeue, migrate or level
    # the record
    start_s: float | None = None
    finish_s: float | None = None
    migrations: int = 0
    restarts: int = 0
    oom: int = 0
    reason: str = ""
    span: tuple[int, int | None, float] | None = None  # (GPU, slices or None, since)
    placed_s: float | None = None  # when it took its current place


@dataclass
class _Pending:
    target: GpuTarget
    wanted: dict[str, Slice | None]
    draining: set[str]
    seen_busy: bool = False  # the policy saw the GPU busy with it


@dataclass
class _Phase:
    jobs: list[str]
    level_s: float
    k: int = 0
    started: float | None = None  # when the current level's jobs run (None: switching)
    ready: bool = True  # the backend has measured enough of this level
    collecting: bool = False  # every level done; waiting for the backend's Profiled

    @property
    def level(self) -> int:
        return PROFILE_ORDER[self.k]


@dataclass
class EngineGpu:
    index: int
    model: GpuModel
    mode: str = "full"
    layout: Layout = field(default_factory=lambda: Layout(()))
    jobs: dict[str, Slice | None] = field(default_factory=dict)
    pending: _Pending | None = None
    phase: _Phase | None = None


Predict = Callable[[dict[int, float], list[dict[int, float]], float | None], SlicePrediction]


def _read_through(field_name: str, attr: str) -> property:
    def get(view: LiveJobView) -> Any:
        return getattr(view._job, attr)

    def refuse(view: LiveJobView, value: Any) -> None:
        raise AttributeError(f"a job's {field_name} is the engine's: the view only reads it")

    return property(get, refuse, doc=f"The engine job's ``{attr}``, as it is now.")


class LiveJobView(JobView):
    """A :class:`JobView` the engine builds when a job's place or state changes: its
    progress (steps done and in all, step time, prediction, profiled, what the meter
    measured) reads the engine's job and meter, so a decision costs nothing for the jobs
    that only made progress since the last."""

    def __init__(
        self,
        job: EngineJob,
        state: str,
        gpu: int | None,
        slice: Slice | None,
        meter: ProgressMeter,
        placed_s: float | None,
    ) -> None:
        d = self.__dict__
        d["_job"] = job
        d["_meter"] = meter
        d["name"] = job.name
        d["arrival_s"] = job.arrival_s
        d["state"] = state
        d["priority"] = job.priority
        d["memory_mb"] = job.memory_mb
        d["checkpointable"] = job.checkpointable
        d["restart_cost_s"] = job.restart_cost_s
        d["gpu"] = gpu
        d["slice"] = slice
        d["workload"] = job.workload
        d["seq"] = job.seq
        d["placed_s"] = placed_s

    done_steps = _read_through("done_steps", "done")  # type: ignore[assignment]
    total_steps = _read_through("total_steps", "total_steps")  # type: ignore[assignment]
    step_time_7g_s = _read_through("step_time_7g_s", "step_time_7g_s")  # type: ignore[assignment]
    prediction = _read_through("prediction", "prediction")  # type: ignore[assignment]
    profiled = _read_through("profiled", "profiled")  # type: ignore[assignment]

    @property  # type: ignore[override]
    def measured_step_s(self) -> dict[int, float]:
        """What the engine's meter measured of the job (a copy), as of its last look."""
        return self._meter.of(self.name)  # type: ignore[no-any-return]

    @measured_step_s.setter
    def measured_step_s(self, value: dict[int, float]) -> None:
        raise AttributeError("a job's measured_step_s is the engine's: the view only reads it")


class Engine:
    """One run of one policy: see the module docstring."""

    def __init__(
        self,
        gpus: Sequence[GpuModel],
        policy: Policy,
        *,
        instant_stops: bool = False,
        setup_s: float = 0.0,
        predict: Predict | None = None,
        wait_for_measurement: bool = False,
        start_s: float = 0.0,
    ) -> None:
        self.policy = policy
        self.instant_stops = instant_stops  # the simulator: a stop completes when asked
        self.setup_s = setup_s  # seconds to create instances or switch modes (virtual clock)
        # A level lasts its length and, when this is set, until the backend says it measured
        # enough of it (level_ready), at most MAX_LEVEL_FACTOR times its length.
        self.wait_for_measurement = wait_for_measurement
        self.start_s = start_s  # seconds a job's process takes to start (virtual clock)
        self.predict = predict
        self.gpus = [EngineGpu(i, m) for i, m in enumerate(gpus)]
        self.jobs: dict[str, EngineJob] = {}
        self.meter = ProgressMeter()
        self.now = 0.0
        self.reconfigurations = 0
        self.migrations = 0
        self.restart_overhead_s = 0.0
        self.oom_starts = 0
        self.decisions = 0
        self.targets: list[dict[str, Any]] = []  # every target carried out, in order
        self.spans: list[tuple[int | None, int | None, float, float]] = []
        self._out: list[Action] = []
        self._news = False  # a change the policy has not seen (see the module docstring)
        self._decided_on: tuple[object, ...] | None = None
        self._unplaceable_checked = -math.inf
        # The incremental view: only jobs that can have changed are rebuilt.
        self._views: dict[str, JobView] = {}
        self._prev_claims: set[str] = set()
        self._waiting: set[str] = set()
        self._touched: set[str] = set()
        self._prev_active: set[str] = set()
        # The queue in the policy's order, kept as jobs join and leave it (see queue_key).
        self._queue: list[tuple[Any, ...]] = []
        self._queue_key: dict[str, tuple[Any, ...]] = {}
        self._queue_order: list[str] = []  # the names of _queue, in its order
        self._queue_names: tuple[str, ...] | None = ()
        # GPUs whose jobs, their instances, shares or states (or the mode) changed since
        # a backend last asked (changed_gpus): the simulator re-paces only those.
        self._changed: set[int] = set()
        # Each GPU's view as the policy last saw it, built anew once the GPU changed.
        self._gpu_views: list[GpuView | None] = [None] * len(self.gpus)
        self._stale_views: set[int] = set()

    # ------------------------------------------------------------ jobs

    def add_job(self, job: EngineJob) -> None:
        """A job of the run (it joins the queue when it :class:`Arrived`)."""
        self.jobs[job.name] = job
        if job.state != "pending":
            self._touched.add(job.name)

    def progress(
        self,
        name: str,
        done_steps: float,
        total_steps: float | None = None,
        step_s: float | None = None,
    ) -> None:
        """Steps ``name`` has done, as measured by the backend; ``step_s``: its seconds per
        step now on its instance, which tells the policy its whole-GPU step time until a
        profile does (:func:`~miso_cli.engine.rules.step_time_7g_s`)."""
        j = self.jobs[name]
        j.done = done_steps
        if total_steps is not None:
            j.total_steps = total_steps
        if step_s is not None and not j.profiled and j.gpu is not None:
            full = self.gpus[j.gpu].model.compute_slices
            slices = j.slice.slices if j.slice is not None else full
            j.step_time_7g_s = rules.step_time_7g_s(step_s, slices, full, j.prediction)

    def withdraw(self, name: str, reason: str) -> None:
        """A job not yet on a GPU leaves the run (cancelled from outside)."""
        j = self.jobs[name]
        if j.state in ("pending", "waiting"):
            j.state = "failed"
            j.reason = reason
            self._waiting.discard(name)
            self._touched.add(name)

    def restore(
        self,
        name: str,
        state: JobState,
        *,
        gpu: int | None = None,
        slice: Slice | None = None,
        share: int | None = None,
    ) -> None:
        """Put ``name`` back as a resumed run found it (``running`` on ``gpu``/``slice``)."""
        j = self.jobs[name]
        j.state = state
        if state == "running" and gpu is not None and 0 <= gpu < len(self.gpus):
            self.gpus[gpu].jobs[name] = slice
            self._dirty(gpu)
            j.gpu, j.slice, j.share = gpu, slice, share
            j.span = (gpu, slice.slices if slice is not None else None, self.now)
        elif state == "running":
            j.state = "waiting"
        self._touched.add(name)

    def touch(self, name: str) -> None:
        """``name`` changed outside the engine (its priority): show it anew to the policy."""
        self._touched.add(name)
        self._news = True

    def active(self) -> list[EngineJob]:
        """The jobs on a GPU now (cost: the active jobs, not every job seen)."""
        jobs = self.jobs
        return [jobs[n] for g in self.gpus for n in g.jobs]

    def changed_gpus(self) -> set[int]:
        """The GPUs whose jobs, instances, shares, job states or mode changed since the
        last call (a backend that paces jobs re-reads only these)."""
        out, self._changed = self._changed, set()
        return out

    def _dirty(self, gpu: int) -> None:
        """GPU ``gpu``'s jobs, instances, mode, target or profiling phase changed."""
        self._changed.add(gpu)
        self._stale_views.add(gpu)

    def changed_gpus_pending(self) -> bool:
        """Whether some GPU changed since :meth:`changed_gpus` was last called."""
        return bool(self._changed)

    def idle(self) -> bool:
        """Nothing runs, drains, profiles or is being set up on any GPU."""
        return all(not g.jobs and g.pending is None and g.phase is None for g in self.gpus)

    # ------------------------------------------------------------ the instant

    def due(self, now: float) -> list[Action]:
        """What the clock alone brings at ``now``: profiling levels that end.

        A backend calls this first at each instant, carries out what it returns (for a
        :class:`CollectProfile`, measure and pass a :class:`Profiled` to :meth:`step`).
        """
        self.now = now
        for g in self.gpus:
            ph = g.phase
            if ph is None or ph.collecting or ph.started is None:
                continue
            if now + EPS < self._level_end(ph):
                continue
            self._out.append(EndLevel(g.index, ph.level, tuple(ph.jobs)))
            if ph.k == len(PROFILE_ORDER) - 1:
                ph.collecting = True
                self._out.append(CollectProfile(g.index, tuple(ph.jobs)))
                continue
            ph.k += 1
            ph.started = None
            for name in ph.jobs:
                self._stop(self.jobs[name], "level", g.index)
            self._advance_phase(g)
        return self._take()

    def next_due(self) -> float:
        """The next instant :meth:`due` has something for (inf: none)."""
        t = math.inf
        for g in self.gpus:
            ph = g.phase
            if ph is not None and not ph.collecting and ph.started is not None:
                t = min(t, self._level_end(ph))
        return t

    def _level_end(self, ph: _Phase) -> float:
        assert ph.started is not None
        if ph.ready or not self.wait_for_measurement:
            return ph.started + ph.level_s
        return ph.started + ph.level_s * MAX_LEVEL_FACTOR

    def level_ready(self, gpu: int) -> None:
        """The backend measured enough of GPU ``gpu``'s current profiling level."""
        ph = self.gpus[gpu].phase
        if ph is not None and ph.started is not None:
            ph.ready = True

    def step(self, now: float, facts: Iterable[Fact] = ()) -> list[Action]:
        """Take in what happened at ``now``; decide in event order; return what to do."""
        self.now = now
        events: dict[str, list[Event]] = {k: [] for k in rules.EVENT_ORDER}
        for fact in facts:
            if isinstance(fact, Arrived):
                j = self.jobs[fact.job]
                if j.state != "pending":
                    continue
                j.state = "waiting"
                self._touched.add(j.name)
                events["arrival"].append(Event("arrival", job=j.name))
            elif isinstance(fact, Ended):
                ev = self._ended(fact)
                if ev is not None:
                    events[ev.kind].append(ev)
            elif isinstance(fact, Profiled):
                if self._profiled(fact):
                    events["profiled"].append(Event("profiled", gpu=fact.gpu))
        for kind in rules.EVENT_ORDER:
            for ev in events[kind]:
                self._decide(ev)
        if self._news:
            self._decide(Event("tick"))
        if self.idle() and self._waiting_any():
            self._unplaceable()
        return self._take()

    def tick(self, now: float, force: bool = False) -> list[Action]:
        """Time passed: decide a ``tick`` if the policy reacts to progress or has news."""
        self.now = now
        if force or self._news or getattr(self.policy, "reacts_to_progress", True):
            self._decide(Event("tick"))
        if self.idle() and self._waiting_any():
            self._unplaceable()
        return self._take()

    def resume(self, now: float) -> list[Action]:
        """A run taken over from an interrupted one: tell the policy (event ``resume``)."""
        self.now = now
        self._decide(Event("resume"))
        if self.idle() and self._waiting_any():
            self._unplaceable()
        return self._take()

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _waiting_any(self) -> bool:
        return bool(self._waiting) or any(j.state == "waiting" for j in self._touched_jobs())

    def _touched_jobs(self) -> list[EngineJob]:
        return [self.jobs[n] for n in self._touched if n in self.jobs]

    # ------------------------------------------------------------ facts

    def _ended(self, fact: Ended) -> Event | None:
        j = self.jobs[fact.job]
        if j.state in ("pending", "finished", "failed", "waiting"):
            return None
        gpu = j.gpu
        g = self.gpus[gpu] if gpu is not None else None
        self._close_span(j)
        self._touched.add(j.name)
        why = j.stop_for
        j.stop_for = None
        j.gpu, j.slice, j.share = None, None, None
        if g is not None:
            g.jobs.pop(j.name, None)
            self._dirty(g.index)
        ev: Event | None = None
        if fact.outcome in ("finished", "failed"):
            j.state = fact.outcome
            if fact.outcome == "finished":
                j.finish_s = self.now
                if j.total_steps is not None:
                    j.done = j.total_steps
            j.reason = fact.reason
            kind = "finish" if fact.outcome == "finished" else "failed"
            ev = Event(kind, job=j.name, gpu=gpu)  # type: ignore[arg-type]
        else:
            # Stopped, requeued (a retry) or out of memory: back to the queue, or on to its
            # new place once every job its GPU's target stops has drained.
            j.state = "waiting"
            if fact.outcome == "oom":
                self.oom_starts += 1
                j.oom += 1
            if fact.outcome != "stopped" or why == "requeue" or why is None:
                self._news = True
        if g is not None and g.phase is not None and j.name in g.phase.jobs:
            if j.state != "waiting" or why != "level":
                g.phase.jobs.remove(j.name)  # it ended (or left) during the phase
            self._advance_phase(g)
            self._check_phase(g)
        for other in self.gpus:
            p = other.pending
            if p is not None and j.name in p.draining:
                p.draining.discard(j.name)
                self._carry_out(other)
        return ev

    def _check_phase(self, g: EngineGpu) -> None:
        ph = g.phase
        if ph is not None and not ph.jobs:
            g.phase = None  # every job of the phase ended: nothing measured
            self._dirty(g.index)
            self._out.append(Note("profile_cancelled", {"gpu": g.index, "jobs": []}))
            self._news = True

    def _profiled(self, fact: Profiled) -> bool:
        g = self.gpus[fact.gpu]
        ph = g.phase
        if ph is None:
            return False
        self._dirty(g.index)
        names = [n for n in ph.jobs if n in fact.measured]
        for n in names:
            j = self.jobs[n]
            prof = {int(k): float(v) for k, v in fact.measured[n].items()}
            j.profiled = True
            if j.state == "profiling":
                j.state = "running"
            if 100 in prof:
                j.step_time_7g_s = prof[100] / 1000.0
            if self.predict is not None:
                others = [
                    {int(k): float(v) for k, v in fact.measured[o].items()} for o in names if o != n
                ]
                j.prediction = self.predict(prof, others, j.memory_mb)
            self._touched.add(n)
        for n in ph.jobs:
            j = self.jobs[n]
            if j.state == "profiling":  # incomplete profile: runs on, unprofiled
                j.state = "running"
            self._touched.add(n)
        g.phase = None
        return True

    # ------------------------------------------------------------ deciding

    def view(self) -> ClusterView:
        """The facts for the policy; a GPU being changed shows as it will be (and busy)."""
        return self._view(look=False)

    def _view(self, look: bool) -> ClusterView:
        """:meth:`view`; with ``look``, the meter also looks at each job that may have moved
        (:meth:`~miso_cli.engine.measure.ProgressMeter.see`: its measured seconds per
        step, which its view reads), in the same pass."""
        meter, now = self.meter, self.now
        gviews = []
        claims: dict[str, tuple[int, Slice | None, str]] = {}
        cached, stale = self._gpu_views, self._stale_views
        self._stale_views = set()
        for g in self.gpus:
            gv = cached[g.index]
            if g.pending is not None:
                g.pending.seen_busy = True
                state = "profiling" if g.pending.target.profile_s else "running"
                for name, sl in g.pending.wanted.items():
                    claims[name] = (g.index, sl, state)
                gv = None  # its view shows what it is being changed to: built each time
            if gv is None or g.index in stale:
                gv = cached[g.index] = GpuView(
                    index=g.index,
                    model=g.model,
                    mode=g.mode,  # type: ignore[arg-type]
                    layout=g.layout if g.mode == "mig" else Layout(()),
                    jobs=dict(g.jobs),
                    profiling=g.phase is not None,
                    busy=g.pending is not None,
                )
            gviews.append(gv)
        for name, (gi, sl, _) in claims.items():
            # A claimed job shows on the GPU that claims it, not where it runs now.
            where = self.jobs[name].gpu
            if where is not None and where != gi and name in gviews[where].jobs:
                del gviews[where].jobs[name]
                self._stale_views.add(where)  # that view is no longer the GPU as it is
            gviews[gi].jobs[name] = sl
            self._stale_views.add(gi)
        active = {n for g in self.gpus for n in g.jobs} | set(claims)
        explicit = self._touched
        if look:  # every job that may have moved is looked at
            touched = active | self._prev_active | explicit
        else:  # only views that changed: every change of a job touches it (or claims it)
            touched = explicit | claims.keys() | self._prev_claims
        prev_claims = self._prev_claims
        self._prev_active = active
        self._prev_claims = set(claims)
        self._touched = set()
        views = self._views
        for name in touched:
            j = self.jobs[name]
            if j.state == "pending":
                continue
            if (
                name not in explicit
                and name not in claims
                and name not in prev_claims
                and name in views
            ):
                # Where it is and in what state are as the policy last saw them (every
                # change of those touches the job); its progress the view reads from the
                # job (LiveJobView).
                if look:
                    v = views[name]
                    # Only a job running on an instance is measured; any other the meter
                    # let go of when it last looked, in the same state.
                    if v.slice is not None and v.state == "running":
                        meter.see(now, name, "running", v.gpu, v.slice, j.done)
                continue
            state: str = j.state
            gpu, sl = j.gpu, j.slice
            if state == "draining":
                state = "running"
            if name in claims and state in ("waiting", "running", "profiling"):
                gpu, sl, state = claims[name]
            if look:
                meter.see(now, name, state, gpu, sl, j.done)
            views[name] = LiveJobView(
                j, state, gpu, sl, meter, j.placed_s if state in ("running", "profiling") else None
            )
            if state == "waiting":
                self._waiting.add(name)
                self._enqueue(name, (-j.priority, j.arrival_s, j.seq, name))
            else:
                self._waiting.discard(name)
                self._enqueue(name, None)
        if self._queue_names is None:
            self._queue_names = tuple(self._queue_order)
        return ClusterView(
            self.now, gviews, self._views, queue_order=self._queue_names, active=active
        )

    def _enqueue(self, name: str, key: tuple[Any, ...] | None) -> None:
        """Keep the queue in the policy's order (ClusterView.queue's key): ``name`` joins
        it at ``key``, or leaves it (None), at the cost of a search, not a sort."""
        old = self._queue_key.get(name)
        if old == key:
            return
        if old is not None:
            at = bisect_left(self._queue, old)
            del self._queue[at]
            del self._queue_order[at]
            del self._queue_key[name]
        if key is not None:
            at = bisect_left(self._queue, key)
            self._queue.insert(at, key)
            self._queue_order.insert(at, name)
            self._queue_key[name] = key
        self._queue_names = None

    def _decide(self, event: Event) -> None:
        # The meter looks only for a policy that reads what it measures (miso run journals
        # it, so a resumed run's policy reads what the interrupted one's would have).
        view = self._view(look=getattr(self.policy, "reads_measured_speed", True))
        if event.kind == "tick" and not getattr(self.policy, "reacts_to_progress", True):
            fingerprint = view.fingerprint()
            if fingerprint == self._decided_on:
                self._news = False
                return
            self._decided_on = fingerprint
        else:
            self._decided_on = None
        self._news = False
        for target in self.policy.decide(event, view):
            self._apply(target, event)

    def _unplaceable(self) -> None:
        """Nothing runs and the policy, asked again, starts none of the waiting jobs."""
        if self._unplaceable_checked != self.now:
            self._unplaceable_checked = self.now
            self._decide(Event("tick"))
            if not self.idle():
                return
        for name in sorted(self._waiting, key=lambda n: self.jobs[n].seq):
            j = self.jobs[name]
            if j.state != "waiting":
                continue
            j.state = "failed"
            j.reason = f"policy {self.policy.name} found no GPU instance for it"
            self._touched.add(name)
            self._out.append(Fail(name, j.reason))
        self._waiting = set()

    # ------------------------------------------------------------ targets

    def _apply(self, target: GpuTarget, event: Event) -> None:
        who = f"policy {self.policy.name}, GPU {target.gpu}"
        if not 0 <= target.gpu < len(self.gpus):
            raise TargetError(f"policy {self.policy.name}: no GPU {target.gpu}")
        g = self.gpus[target.gpu]
        rules.check_target(g.model, target, who)  # before any job is asked to stop
        for name in target.assignment:
            j = self.jobs.get(name)
            if j is None or j.state in ("pending", "finished"):
                raise TargetError(f"{who}: assigned {name!r}, which is not in the system")
        if self._changes_nothing(g, target):
            return  # the GPU is already so: not a decision
        self.decisions += 1
        record = target_record(self.now, target)
        record["event"] = {"kind": event.kind, "job": event.job, "gpu": event.gpu}
        record["mps_share"] = dict(target.mps_share)
        self.targets.append(record)
        self._out.append(Note("decision", record))
        if g.phase is not None:  # a new target ends the profiling phase early
            self._out.append(Note("profile_cancelled", {"gpu": g.index, "jobs": g.phase.jobs}))
            for n in g.phase.jobs:
                if self.jobs[n].state == "profiling":
                    self.jobs[n].state = "running"
                    self._touched.add(n)
            g.phase = None
            self._dirty(g.index)
        if rules.is_reconfiguration(g.mode, g.layout if g.mode == "mig" else Layout(()), target):
            self.reconfigurations += 1
        wanted: dict[str, Slice | None] = {}
        for name, sl in target.assignment.items():
            if self.jobs[name].state != "failed":
                wanted[name] = sl if target.mode == "mig" else None
        # The running jobs a target can stop: this GPU's and those it takes from others
        # (rules.moves leaves every other job alone), in the cluster's order.
        involved = {g.index}
        for name in target.assignment:
            gi = self.jobs[name].gpu
            if gi is not None:
                involved.add(gi)
        running = {
            j.name: rules.Placed(j.gpu, j.slice, float(j.share or 100))  # type: ignore[arg-type]
            for gi in sorted(involved)
            for j in (self.jobs[n] for n in self.gpus[gi].jobs)
            if j.state in ("running", "profiling") and j.gpu is not None
        }
        stops = rules.moves(g.index, g.mode, target, running)
        for other in self.gpus:  # a job taken from another GPU's plan leaves that plan
            if other is not g and other.pending is not None:
                for name in wanted:
                    other.pending.wanted.pop(name, None)
        # A newer target replaces one still draining: what drains keeps draining.
        draining: set[str] = set(g.pending.draining) if g.pending is not None else set()
        g.pending = _Pending(target, wanted, draining)
        self._dirty(g.index)
        for name, why in stops.items():
            j = self.jobs[name]
            if why == "migrate":
                self.migrations += 1
                j.migrations += 1
            else:
                j.restarts += 1
            self._stop(j, why, g.index)
            if j.state == "draining":
                g.pending.draining.add(name)
        # jobs of this GPU that are still draining for an older target of it
        self._carry_out(g)

    def _changes_nothing(self, g: EngineGpu, target: GpuTarget) -> bool:
        if g.pending is not None or g.phase is not None or target.profile_s:
            return False
        if target.mode != g.mode or (target.mode == "mig" and target.layout != g.layout):
            return False
        if set(target.assignment) != set(g.jobs):
            return False
        for name, sl in target.assignment.items():
            j = self.jobs[name]
            if j.state != "running" or j.gpu != g.index:
                return False
            if target.mode == "mig" and j.slice != sl:
                return False
            if target.mode == "mps" and int(target.mps_share.get(name, 100)) != (j.share or 100):
                return False
        return True

    def _stop(self, j: EngineJob, why: str, gpu: int) -> None:
        """Ask ``j`` to checkpoint and stop; with instant stops it is stopped now."""
        self._out.append(Stop(j.name, why, gpu))
        if j.gpu is not None:
            self._dirty(j.gpu)
        j.state = "draining"
        j.stop_for = why
        self._touched.add(j.name)
        if self.instant_stops:
            self._ended(Ended(j.name, "stopped"))

    def _carry_out(self, g: EngineGpu) -> None:
        """Once the jobs a target stops have drained: reconfigure, then start its jobs."""
        p = g.pending
        if p is None or p.draining:
            return
        g.pending = None
        target = p.target
        reset = target.mode != g.mode
        layout = target.layout if target.mode == "mig" else Layout(())
        old = g.layout if g.mode == "mig" else Layout(())
        kept = set(old.slices) & set(layout.slices) if not reset else set()
        created = frozenset(set(layout.slices) - kept)
        changed = reset or (target.mode == "mig" and layout != old)
        delay = self.setup_s if (reset or created) else 0.0
        # Jobs left on instances that disappear (not named by the target) go back too.
        for name, sl in list(g.jobs.items()):
            if name not in p.wanted and (reset or (sl is not None and sl not in kept)):
                self._stop(self.jobs[name], "requeue", g.index)
        self._out.append(
            Reconfigure(
                g.index,
                target.mode,
                layout,
                created,
                changed,
                target.reason,
                target.profile_s,
                tuple(p.wanted),
            )
        )
        g.mode = target.mode
        g.layout = layout
        self._dirty(g.index)
        if p.seen_busy:
            self._news = True  # the policy saw this GPU busy: it is free now
        pauses: list[float] = []
        phase_jobs: list[str] = []
        for name, sl in p.wanted.items():
            j = self.jobs[name]
            if j.gpu == g.index and j.slice == sl and j.state in ("running", "profiling"):
                if target.profile_s:
                    phase_jobs.append(name)
                continue  # kept: same instance (or same MPS daemon and share)
            if j.state != "waiting":
                continue  # finished meanwhile, or taken by another target
            if target.mode == "mig" and not fits_instance(g.model, sl, j.memory_mb):
                # Out of memory on start: back in the queue, its progress kept.
                self.oom_starts += 1
                j.oom += 1
                self._touched.add(name)
                self._news = True
                self._out.append(
                    Note("oom", {"job": name, "gpu": g.index, "slice": sl.key if sl else None})
                )
                continue
            share = int(target.mps_share.get(name, 100)) if target.mode == "mps" else None
            level = PROFILE_ORDER[0] if target.profile_s else None
            pause = self._start(j, g, sl, share, level, new=reset or sl in created, delay=delay)
            pauses.append(pause)
            if target.profile_s:
                phase_jobs.append(name)
        if target.profile_s and phase_jobs:
            ph = _Phase(phase_jobs, float(target.profile_s) / len(PROFILE_ORDER))
            ph.ready = not self.wait_for_measurement
            ph.started = self.now + max(pauses + [delay])
            g.phase = ph
            for n in phase_jobs:
                self.jobs[n].state = "profiling"
                self._touched.add(n)

    def _start(
        self,
        j: EngineJob,
        g: EngineGpu,
        sl: Slice | None,
        share: int | None,
        level: int | None,
        *,
        new: bool,
        delay: float,
    ) -> float:
        """Start ``j``; return its pause (restore from a checkpoint, then instance setup)."""
        resume = j.done > 0 or j.migrations > 0 or j.restarts > 0
        pause = self.start_s
        if resume:
            pause += j.restart_cost_s
            self.restart_overhead_s += j.restart_cost_s
        if new or g.mode == "mps":
            pause += delay
        j.state = "running"
        j.gpu, j.slice = g.index, sl if g.mode == "mig" else None
        j.share = level if level is not None else share
        if j.start_s is None:
            j.start_s = self.now
        g.jobs[j.name] = j.slice
        self._dirty(g.index)
        j.span = (g.index, j.slice.slices if j.slice is not None else None, self.now)
        j.placed_s = self.now
        self._touched.add(j.name)
        self._out.append(Start(j.name, g.index, j.slice, j.share, pause, resume, level))
        return pause

    def _advance_phase(self, g: EngineGpu) -> None:
        """Between two levels: once every job stopped, start them all at the next level."""
        ph = g.phase
        if ph is None or ph.started is not None or ph.collecting:
            return
        if any(self.jobs[n].state != "waiting" for n in ph.jobs):
            return  # still draining (or not yet asked to)
        if not ph.jobs:
            return
        for name in ph.jobs:
            j = self.jobs[name]
            j.restarts += 1
            self._start(j, g, None, 100, ph.level, new=False, delay=0.0)
            j.state = "profiling"
        ph.started = self.now
        ph.ready = not self.wait_for_measurement

    def _close_span(self, j: EngineJob) -> None:
        if j.span is not None:
            gpu, slices, since = j.span
            self.spans.append((gpu, slices, since, self.now))
            j.span = None

    # ------------------------------------------------------------ results

    def busy_slice_s(self) -> float:
        spans = list(self.spans)
        spans += [(j.span[0], j.span[1], j.span[2], self.now) for j in self.active() if j.span]
        return rules.busy_slice_seconds(spans, {g.index: g.model.compute_slices for g in self.gpus})

    def summary(self) -> dict[str, Any]:
        return summary(
            self.policy.name,
            list(self.jobs.values()),
            reconfigurations=self.reconfigurations,
            migrations=self.migrations,
            restart_overhead_s=self.restart_overhead_s,
            oom_starts=self.oom_starts,
            busy_slice_s=self.busy_slice_s(),
            capacity_slices=sum(g.model.compute_slices for g in self.gpus),
        )


def target_record(now: float, target: GpuTarget) -> dict[str, Any]:
    """A target as both backends log it (``miso run`` in its journal's decisions)."""
    return {
        "time": round(now, 3),
        "gpu": target.gpu,
        "mode": target.mode,
        "layout": target.layout.name if target.mode == "mig" else None,
        "assignment": {j: (s.key if s is not None else None) for j, s in target.assignment.items()},
        "profile_s": target.profile_s,
        "reason": target.reason,
    }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summary(
    policy: str,
    jobs: Sequence[Any],
    *,
    reconfigurations: int,
    migrations: int,
    restart_overhead_s: float,
    oom_starts: int,
    busy_slice_s: float,
    capacity_slices: int,
    origin: float = 0.0,
) -> dict[str, Any]:
    """The figures both ``miso run`` and ``miso simulate`` report, computed one way.

    ``jobs``: records with ``arrival_s``, ``start_s``, ``finish_s`` (None when it did
    not finish), measured from ``origin``. Makespan: from ``origin`` to the last finish.
    """
    jct = sorted(j.finish_s - j.arrival_s for j in jobs if j.finish_s is not None)
    queue = [max(0.0, j.start_s - j.arrival_s) for j in jobs if j.start_s is not None]
    makespan = max((j.finish_s - origin for j in jobs if j.finish_s is not None), default=0.0)
    return {
        "policy": policy,
        "jobs": len(jobs),
        "unfinished": sum(1 for j in jobs if j.finish_s is None),  # failed, or never placed
        "mean_jct_s": sum(jct) / len(jct) if jct else None,
        "p95_jct_s": percentile(jct, 95) if jct else None,
        "mean_queue_s": sum(queue) / len(queue) if queue else None,
        "makespan_s": makespan,
        "reconfigurations": reconfigurations,
        "migrations": migrations,
        "restart_overhead_s": restart_overhead_s,
        "oom_starts": oom_starts,
        "slice_utilisation": (
            busy_slice_s / (capacity_slices * makespan)
            if makespan > 0 and capacity_slices
            else None
        ),
    }
