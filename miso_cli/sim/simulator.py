"""The virtual backend of :class:`miso_cli.engine.core.Engine`: replay a trace under a policy.

Every decision (event order, reconciliation, profiling phases, out of memory on start,
jobs that can never be placed, the restart cost, the metrics) is the engine's, the same
code ``miso run`` drives; the simulator owns only the virtual clock and the jobs' pace.

What it models:

* speed: a job's step time is the catalog's on its MIG instance (``mig_<g>g``),
  on a whole GPU its ``mig_7g``, under MPS the simulated GPU's MPS model
  (:func:`miso_cli.gpu.sim.simmps.step_time_ms`: the share and the co-runners);
* memory: a job whose catalog entry for a size is empty does not fit it; a
  policy that starts it there sees it fail to start (out of memory) and requeued,
  then is asked again; a job no policy places fails (``JobRecord.failed``);
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
from operator import attrgetter
from pathlib import Path
from typing import Any

from miso_cli.engine import core
from miso_cli.engine.core import (  # noqa: F401 (re-exported: the simulator's API)
    DEFAULT_RESTART_S,
    PAPER_RESTART_COSTS_S,
    Engine,
    EngineJob,
    target_record,
)
from miso_cli.engine.rules import PROFILE_LEVELS, TargetError
from miso_cli.errors import BadInput, MisoError
from miso_cli.gpu.profiles import GpuModel
from miso_cli.policy.core import Policy, SlicePrediction
from miso_cli.spec.catalog import Catalog, Workload


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
    return core.restart_cost_s(workload.family, workload.name, costs)


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
    start_s: float = 0.0  # seconds a job's process takes to start, at every start
    # Seconds a profiling level needs before its step times are measured (as miso run
    # measures them: a start, a warm-up step, a few progress reports); 0: levels last
    # exactly profile_s / levels.
    measure_s: float = 0.0


@dataclass
class JobRecord(core.JobTimes):
    name: str
    workload: str
    arrival_s: float
    start_s: float | None = None
    finish_s: float | None = None
    migrations: int = 0
    restarts: int = 0
    oom: int = 0
    failed: str | None = None  # why it failed (never placed), None when it finished


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
        """The figures ``miso run`` reports too (:func:`miso_cli.engine.core.summary`)."""
        return core.summary(
            self.policy,
            self.jobs,
            reconfigurations=self.reconfigurations,
            migrations=self.migrations,
            restart_overhead_s=self.restart_overhead_s,
            oom_starts=self.oom_starts,
            busy_slice_s=self.busy_slice_s,
            capacity_slices=self.capacity_slices,
        )


_percentile = core.percentile

Predict = Callable[[dict[int, float], list[dict[int, float]], float | None], SlicePrediction]


@dataclass
class _Virtual:
    """What the virtual backend keeps of a job beside the engine (its pace, paused
    until when and steps per second, is in the simulator's pace table)."""

    workload: Workload


_SEQ = attrgetter("seq")


class _PacedJob(EngineJob):
    """An engine job whose steps done live in the simulator's table, one array for every
    job, so that advancing the clock moves every running job in one vector operation (the
    same floating-point operations, job by job, as a loop would do)."""

    _steps: Any = None  # a memoryview of the table's steps done (None: not attached)
    _slot: int = 0

    @property  # type: ignore[override]
    def done(self) -> float:
        steps = self._steps
        return self.__dict__.get("_done", 0.0) if steps is None else steps[self._slot]

    @done.setter
    def done(self, value: float) -> None:
        if self._steps is None:
            self.__dict__["_done"] = float(value)
        else:
            self._steps[self._slot] = float(value)


class Simulator:
    """The virtual backend of :class:`~miso_cli.engine.core.Engine`. Use :func:`simulate`.

    Jobs are paced by the catalog on a virtual clock; a stop completes when asked, a
    start pays the pause the engine gives it. Every decision is the engine's.
    """

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
        import numpy as np

        self._np = np
        self.config = config or SimConfig()
        self.policy = policy
        self.knowledge = getattr(policy, "knowledge", "none")
        if self.knowledge == "profile" and predict is None:
            raise ValueError(f"policy {policy.name} needs a predictor")
        if not gpus:
            raise ValueError("no GPUs to simulate")
        self.rng = random.Random(self.config.seed)
        self.engine = Engine(
            gpus,
            policy,
            instant_stops=True,
            setup_s=self.config.reconfig_s,
            start_s=self.config.start_s,
            wait_for_measurement=self.config.measure_s > 0,
            predict=predict if self.knowledge == "profile" else None,
        )
        self.trace = {t.name: t for t in trace}
        self.virtual: dict[str, _Virtual] = {}
        # The pace table, by job (its seq): steps done, steps in all, steps per second,
        # paused until. Only the jobs on a GPU (_slots) are read or moved.
        n = len(trace)
        self._done = np.zeros(n)
        self._total = np.zeros(n)
        self._rate = np.zeros(n)
        self._paused = np.zeros(n)
        steps = memoryview(self._done).cast("B").cast("d")
        for t in trace:
            w = catalog[t.workload]
            step_7g_s = (w.step_time_ms(7) or 0.0) / 1000.0
            job = _PacedJob(
                name=t.name,
                arrival_s=t.arrival_s,
                seq=len(self.virtual),
                total_steps=t.duration_7g_s / step_7g_s,
                memory_mb=w.memory_need_mb(),  # the job's need: the same on every GPU
                restart_cost_s=restart_cost_for(w, self.config.restart_costs),
                workload=t.workload,
            )
            job._steps, job._slot = steps, job.seq
            self._total[job.seq] = job.total_steps or 0.0
            self.engine.add_job(job)
            self.virtual[t.name] = _Virtual(w)
        self.jobs = self.engine.jobs
        self.gpus = self.engine.gpus
        self.now = 0.0
        # The jobs on a GPU, in the engine's order (active()), and their rows of the pace
        # table, rebuilt when the engine changes a GPU; the pauses still to end, soonest first.
        self._live: list[EngineJob] = []
        self._slots = np.zeros(0, dtype=np.intp)
        self._pauses: list[tuple[float, str]] = []

    # ------------------------------------------------------------------ speeds

    def _step_ms(self, name: str) -> float | None:
        j = self.jobs[name]
        w = self.virtual[name].workload
        g = self.gpus[j.gpu]  # type: ignore[index]
        if g.mode == "mig":
            assert j.slice is not None
            # Fit by the instance's real memory (an H100's 2g.20gb holds what missed the
            # A100's 2g.10gb), not by the catalog's column for the A100.
            mem = g.model.profile(j.slice.profile).memory_mb
            return w.step_time_on(j.slice.slices, mem, j.memory_mb)
        if g.mode == "full":
            return w.step_time_ms(7)
        co = [
            (self.virtual[o].workload, float(self.jobs[o].share or 100))
            for o in g.jobs
            if o != name and self.jobs[o].state in ("running", "profiling")
        ]
        return mps_step_time_ms(w, float(j.share or 100), co, self.config.mps_model)

    def _update_rates(self) -> None:
        """Re-pace the jobs whose pace may have changed: those of the GPUs the engine
        changed, and those whose pause is over (a job's pace depends on nothing else)."""
        changed = self.engine.changed_gpus()
        names: list[str] = []
        if changed:
            self._relive()
            for gi in sorted(changed):
                names.extend(self.gpus[gi].jobs)
        pauses = self._pauses
        while pauses and self.now >= pauses[0][0] - 1e-9:
            names.append(heapq.heappop(pauses)[1])
        for name in names:
            j = self.jobs[name]
            if j.gpu is None:
                continue  # it left its GPU since
            if self.now < self._paused[j.seq] - 1e-9:
                self._rate[j.seq] = 0.0
                continue
            step = self._step_ms(name)
            rate = 0.0 if step is None else 1000.0 / step
            if rate != self._rate[j.seq] and step is not None and not j.profiled:
                self.engine.progress(name, j.done, None, step / 1000.0)  # its pace, seen
            self._rate[j.seq] = rate

    def _relive(self) -> None:
        self._live = live = self.engine.active()
        self._slots = self._np.fromiter(map(_SEQ, live), self._np.intp, len(live))

    def _measured(self) -> float:
        """Levels measured enough by now are ready (the engine may end them); the next
        instant one will be."""
        t = math.inf
        if self.config.measure_s <= 0:
            return t
        for g in self.gpus:
            ph = g.phase
            if ph is None or ph.ready or ph.started is None:
                continue
            at = ph.started + self.config.measure_s
            if at <= self.now + 1e-9:
                self.engine.level_ready(g.index)
            else:
                t = min(t, at)
        return t

    def _next_time(self, arrivals: list[tuple[float, int, str]]) -> float:
        t = min(self.engine.next_due(), self._measured())
        if arrivals:
            t = min(t, arrivals[0][0])
        slots = self._slots
        if not len(slots):
            return t
        np, now = self._np, self.now
        # Per job: the end of its pause, else (when it runs) now + steps left / pace.
        paused = self._paused[slots]
        held = paused > now + 1e-9
        if held.any():
            t = min(t, float(paused[held].min()))
        rate = self._rate[slots]
        going = ~held & (rate > 0)
        if going.any():
            left = np.maximum(0.0, self._total[slots][going] - self._done[slots][going])
            t = min(t, float((now + left / rate[going]).min()))
        return t

    def _advance(self, t: float) -> None:
        dt = t - self.now
        slots = self._slots
        if dt > 0 and len(slots):
            # done + rate * dt, at most the total; a job at rate 0 keeps its steps exactly.
            done = self._done[slots] + self._rate[slots] * dt
            self._done[slots] = self._np.minimum(self._total[slots], done)
        self.now = t

    # ------------------------------------------------------------------ actions

    def _carry_out(self, actions: list[core.Action]) -> list[core.Fact]:
        """Do what the engine asks, on the virtual clock; what it brings back in."""
        facts: list[core.Fact] = []
        for a in actions:
            if isinstance(a, core.Start):
                until = self.now + a.pause_s
                self._paused[self.jobs[a.job].seq] = until
                heapq.heappush(self._pauses, (until, a.job))  # re-paced when it is over
            elif isinstance(a, core.Fail):
                self.unfinished -= 1
            elif isinstance(a, core.CollectProfile):
                facts.append(core.Profiled(a.gpu, self._measure(a.jobs)))
        return facts

    def _measure(self, names: Sequence[str]) -> dict[str, dict[int, float]]:
        """Each job's step time (ms) at every profiling level with the others beside it."""
        mix = [self.virtual[n].workload for n in names]
        measured: dict[str, dict[int, float]] = {}
        for n in names:
            w = self.virtual[n].workload
            prof = {}
            for level in PROFILE_LEVELS:
                co = [(m, float(level)) for o, m in zip(names, mix, strict=True) if o != n]
                t = mps_step_time_ms(w, level, co, self.config.mps_model)
                noise = self.rng.gauss(1.0, self.config.profile_noise)
                prof[level] = t * max(noise, 0.5)
            measured[n] = prof
        return measured

    def _oracle(self, name: str) -> None:
        j, w = self.jobs[name], self.virtual[name].workload
        full = w.step_time_ms(7)
        assert full is not None
        rel = {g: t / full for g, t in w.mig_ms.items() if t is not None}
        j.prediction = SlicePrediction(rel, {}, source="oracle")
        j.profiled = True
        j.step_time_7g_s = full / 1000.0

    def _engine(self, call: Callable[..., list[core.Action]], *args: Any) -> list[core.Action]:
        try:
            return call(*args)
        except TargetError as exc:
            raise SimulationError(str(exc)) from None

    def run(self) -> SimResult:
        engine = self.engine
        arrivals = sorted((t.arrival_s, engine.jobs[n].seq, n) for n, t in self.trace.items())
        heapq.heapify(arrivals)
        self.unfinished = len(self.jobs)
        steps = 0
        while self.unfinished:
            steps += 1
            if steps > self.config.max_events:
                raise SimulationError(f"policy {self.policy.name}: no end after {steps} events")
            self._update_rates()
            t = self._next_time(arrivals)
            if t == math.inf:  # the engine fails what can never run: this is a bug
                waiting = [n for n, j in self.jobs.items() if j.state == "waiting"]
                raise SimulationError(
                    f"policy {self.policy.name} left {len(waiting)} job(s) waiting with "
                    f"nothing running (first: {waiting[0] if waiting else '?'})"
                )
            self._advance(t)
            self._measured()
            facts = self._carry_out(self._engine(engine.due, self.now))
            ended: list[core.Fact] = []
            if engine.changed_gpus_pending():
                self._relive()
            slots = self._slots
            if len(slots):
                # Done (every step, its pause over), in the engine's order of its jobs.
                over = (self._done[slots] >= self._total[slots] - 1e-6) & (
                    self._paused[slots] <= self.now + 1e-9
                )
                for k in self._np.flatnonzero(over).tolist():
                    j = self._live[k]
                    if j.state in ("running", "profiling"):
                        ended.append(core.Ended(j.name, "finished"))
                        self.unfinished -= 1
            facts = ended + facts
            while arrivals and arrivals[0][0] <= self.now + 1e-9:
                _, _, name = heapq.heappop(arrivals)
                if self.knowledge == "oracle":
                    self._oracle(name)
                facts.append(core.Arrived(name))
            self._carry_out(self._engine(engine.step, self.now, facts))
        return SimResult(
            policy=self.policy.name,
            jobs=[
                JobRecord(
                    j.name,
                    j.workload or "",
                    j.arrival_s,
                    j.start_s,
                    j.finish_s,
                    j.migrations,
                    j.restarts,
                    j.oom,
                    j.reason if j.state == "failed" else None,
                )
                for j in self.jobs.values()
            ],
            reconfigurations=engine.reconfigurations,
            migrations=engine.migrations,
            restart_overhead_s=engine.restart_overhead_s,
            oom_starts=engine.oom_starts,
            busy_slice_s=engine.busy_slice_s(),
            capacity_slices=sum(g.model.compute_slices for g in self.gpus),
            decisions=engine.decisions,
            targets=engine.targets,
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
