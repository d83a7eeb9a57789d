"""The runtime backend of :class:`miso_cli.engine.core.Engine`: processes on real or
simulated GPUs, on the wall clock.

Every scheduling decision is the engine's, the same code ``miso simulate`` drives. The
executor tells it what happened (a job's process ended, a job arrived, how far each job
got, a profiling level measured enough) on the engine's clock (seconds since the start,
times the speed-up of synthetic jobs on simulated GPUs), and carries out what it returns:
checkpoint-and-stop a job (its signal; the engine waits for its exit), change a GPU's
layout through :func:`miso_cli.gpu.apply.apply_layout` (instances that stay keep their
jobs) or mode (the MPS daemon), start a job pinned to its instance, measure a profiling
level, fail a job no policy places. Everything it does is written to
the journal first, so ``miso run --resume`` after a crash (even ``kill -9``)
finds running jobs again, collects the exit status of jobs that ended
meanwhile, and restarts only the others: no job lost, none run twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.engine import core, rules
from miso_cli.engine.core import (
    DEFAULT_RESTART_S,
    CollectProfile,
    Ended,
    EndLevel,
    Engine,
    EngineJob,
    Fail,
    Note,
    Profiled,
    Reconfigure,
    Start,
    Stop,
)
from miso_cli.engine.measure import ProgressMeter
from miso_cli.errors import BadInput, MisoError, UsageError
from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.policy.core import ClusterView, GpuView, Policy
from miso_cli.runtime import launch
from miso_cli.runtime.journal import ACTIVE, Attempt, JobRecord, Journal
from miso_cli.runtime.mps_phase import MIN_INTERVALS, PROFILE_LEVELS, ProfilePhase
from miso_cli.runtime.progress import Progress, ProgressTracker
from miso_cli.runtime.snapshot import GpuRow, JobRow, RunSnapshot
from miso_cli.spec.queue import JobSpec

DEFAULT_HANG_TIMEOUT_S = 600.0
# Counted by the engine (miso_cli.engine.core), journaled, reported as miso simulate does.
METRICS = ("reconfigurations", "migrations", "oom_starts")
EventSink = Callable[[dict[str, Any]], None]


@dataclass
class ExecutorOptions:
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S
    speedup: float | None = None  # for synthetic jobs on simulated GPUs (MISO_SIM_SPEEDUP)
    poll_s: float = 0.2  # how often exits are checked
    view_s: float = 1.0  # how often progress, hangs, ticks and the live view are updated
    usage_s: float = 5.0  # how often process trees are sampled (CPU, RSS)
    save_s: float = 5.0  # how often progress is journaled when nothing else changed
    progress_event_s: float = 2.0  # least time between two progress events of one job
    run_as: launch.RunAs | None = None
    model_path: Path | None = None  # the predictor for profiled jobs (default: fitted, else prior)
    # Checkpoint + restore seconds (the engine's clock) a move costs, told to the policy;
    # miso simulate's --restart-cost.
    restart_cost_s: float = DEFAULT_RESTART_S


@dataclass
class GpuState:
    """What the executor knows of one GPU between decisions."""

    index: int
    uuid: str
    name: str
    model: Any  # GpuModel
    mode: str = "full"  # full, mig, mps (as the policy sees it)
    mig_enabled: bool = False
    layout: Layout = field(default_factory=lambda: Layout(()))
    uuids: dict[Slice, str] = field(default_factory=dict)  # instance -> MIG-uuid
    phase: Any = None  # a ProfilePhase (what is measured) while the engine profiles the GPU
    daemon: Any = None  # the MPS control daemon while in mode "mps"
    shares: dict[str, float] = field(default_factory=dict)  # mode "mps": job -> its share


def slice_json(sl: Slice | None) -> dict[str, Any] | None:
    if sl is None:
        return None
    return {"profile": sl.profile, "slices": sl.slices, "start": sl.start, "size": sl.size}


def slice_from_json(data: dict[str, Any] | None) -> Slice | None:
    if not data:
        return None
    return Slice(int(data["start"]), int(data["size"]), str(data["profile"]), int(data["slices"]))


class Executor:
    """Runs one journaled queue to completion (or interruption) under a policy."""

    def __init__(
        self,
        driver: Any,
        policy: Policy,
        journal: Journal,
        *,
        options: ExecutorOptions | None = None,
        sink: EventSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.drv = driver
        self.policy = policy
        self.journal = journal
        self.opt = options or ExecutorOptions()
        self.sink = sink or (lambda ev: None)
        self.clock = clock
        self.specs: dict[str, JobSpec] = {j.name: j for j in journal.queue.jobs}
        self.order = [j.name for j in journal.queue.jobs]
        self.seq = {name: i for i, name in enumerate(self.order)}
        # Jobs whose arrival lies ahead (queue key ``arrival``), by arrival time.
        self.not_arrived: dict[str, float] = {}
        self.gpus: list[GpuState] = []
        self.trackers: dict[str, ProgressTracker] = {}
        self.popens: dict[str, Any] = {}
        self.usage: dict[str, dict[str, float]] = {}
        self.watcher = launch.TreeWatcher()
        self.interrupts = 0
        self._dirty = True
        self._last_save = 0.0
        self._last_progress_event: dict[str, float] = {}
        self.t0 = journal.started_at
        self.state_dir = Path(journal.run_dir).parents[1]
        # Profiles the run knows: measured by a phase, or fresh in the store at the start.
        self.profiles: dict[str, dict[str, Any]] = journal.data.setdefault("profiles", {})
        self._predict: Any = None
        self._predictions: dict[str, Any] = {}
        # What the run measured of each job's speed: kept in the journal, so that a
        # resumed run (and its policy) continues with it.
        self.meter = ProgressMeter.from_json(journal.data.get("measured"))
        # Every decision is the engine's (miso_cli.engine.core); the executor tells it what
        # happened (self.facts, passed at the next step) and carries out what it returns.
        self._engine: Engine | None = None
        self.facts: list[core.Fact] = []
        self._new_phases: set[int] = set()

    # ------------------------------------------------------------ events

    def emit(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, "time": round(self.clock(), 3), **fields}
        self.journal.event(record)
        self.sink(record)

    # ------------------------------------------------------------ the engine

    def now_s(self) -> float:
        """The engine's clock: seconds since the run started, in catalog time on simulated
        GPUs (wall seconds times the speed-up of synthetic jobs), wall seconds on hardware."""
        return (self.clock() - self.t0) * self.scale

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._build_engine()
        return self._engine

    def _build_engine(self, *, resumed: bool = False) -> Engine:
        """The engine of this run, with the journal's facts (a resumed run continues them)."""
        eng = Engine(
            [g.model for g in self.gpus],
            self.policy,
            instant_stops=False,
            wait_for_measurement=True,  # a level lasts until its step times are measured
        )
        eng.meter = self.meter
        eng.now = self.now_s()
        for g, eg in zip(self.gpus, eng.gpus, strict=True):
            eg.mode = g.mode
            eg.layout = g.layout if g.mode == "mig" else Layout(())
        metrics = self.journal.data.get("metrics", {})
        eng.reconfigurations = int(metrics.get("reconfigurations", 0))
        eng.migrations = int(metrics.get("migrations", 0))
        eng.oom_starts = int(metrics.get("oom_starts", 0))
        eng.restart_overhead_s = float(metrics.get("restart_overhead_s", 0.0)) * self.scale
        for name in self.order:
            self._add_to_engine(eng, name, arrived=resumed)
        return eng

    def _add_to_engine(self, eng: Engine, name: str, *, arrived: bool = False) -> None:
        """``name`` as the engine tracks it; ``arrived``: a waiting job is in the queue
        already (a resumed run), else it joins with its :class:`~core.Arrived` fact."""
        spec, rec = self.specs[name], self.journal.jobs[name]
        scale = self.scale
        j = EngineJob(
            name,
            arrival_s=(rec.queued_at - self.t0) * scale,
            seq=self.seq[name],
            total_steps=spec.steps,
            memory_mb=spec.memory_mb,
            # One rule in both backends: one figure for every job (--restart-cost).
            restart_cost_s=self.opt.restart_cost_s,
            priority=spec.priority,
            checkpointable=spec.checkpointable,
            workload=spec.workload,
        )
        p = rec.progress or {}
        j.done = float(p.get("step") or 0.0)
        if p.get("total"):
            j.total_steps = float(p["total"])
        if rec.first_started_at is not None:
            j.start_s = (rec.first_started_at - self.t0) * scale
        self._know_profile(j)
        eng.add_job(j)
        if rec.state == "finished":
            j.state = "finished"
            j.finish_s = ((rec.ended_at or self.t0) - self.t0) * scale
        elif rec.terminal:
            j.state, j.reason = "failed", rec.reason
        elif rec.state in ACTIVE:
            gpu = self.gpus[rec.gpu] if rec.gpu is not None and rec.gpu < len(self.gpus) else None
            share = gpu.shares.get(name) if gpu is not None else None
            eng.restore(
                name,
                "running",
                gpu=rec.gpu,
                slice=slice_from_json(rec.slice),
                share=int(share) if share else None,
            )
        elif name not in self.not_arrived and arrived:
            eng.restore(name, "waiting")

    def _know_profile(self, j: EngineJob) -> None:
        known = self.profiles.get(j.name)
        if known is None:
            return
        j.profiled = True
        j.prediction = self.prediction(j.name)
        mps100 = (known.get("mps") or {}).get("100")
        j.step_time_7g_s = float(mps100) if mps100 else known.get("step_time_7g_s")

    def _feed_progress(self) -> None:
        """What the jobs on a GPU have done, for the engine (and the policy's view)."""
        eng = self.engine
        for j in eng.active():
            tracker = self.trackers.get(j.name)
            if tracker is None:
                continue
            prog = tracker.progress
            if prog.step is not None:
                step_s = prog.step_time_s * self.scale if prog.step_time_s else None
                total = float(prog.total) if prog.total else None
                eng.progress(j.name, float(prog.step), total, step_s)

    def view(self) -> ClusterView:
        """The facts the policy sees next (the engine's view)."""
        self._feed_progress()
        self.engine.now = self.now_s()
        return self.engine.view()

    def step(self) -> None:
        """One instant: what the clock brings (profiling levels), then what happened."""
        eng = self.engine
        self._feed_progress()
        self._perform(self._ask(eng.due, self.now_s()))
        while self.facts:
            facts, self.facts = self.facts, []
            self._perform(self._ask(eng.step, self.now_s(), facts))

    def _ask(self, call: Callable[..., list[core.Action]], *args: Any) -> list[core.Action]:
        """The engine's answer; a target no GPU can be is the policy's fault (a usage error),
        found before any job was asked to stop for it."""
        try:
            return call(*args)
        except rules.TargetError as exc:
            raise UsageError(str(exc)) from None

    def _perform(self, actions: list[core.Action]) -> None:
        """Carry out what the engine asks, on processes, the GPUs and the journal."""
        for a in actions:
            if isinstance(a, Note):
                self._note(a)
            elif isinstance(a, Stop):
                if a.reason != "level":
                    self.emit("draining", gpu=a.gpu, jobs=[a.job], reason=a.reason)
                self.stop_jobs([a.job], {a.job: a.reason}, wait=False)
            elif isinstance(a, Reconfigure):
                self._reconfigure(a)
            elif isinstance(a, Start):
                self._start_action(a)
            elif isinstance(a, Fail):
                rec = self.journal.jobs[a.job]
                if not rec.terminal:
                    rec.state = "failed"
                    rec.ended_at = self.clock()
                    rec.reason = a.reason
                    self.emit("failed", job=a.job, reason=a.reason)
            elif isinstance(a, EndLevel):
                self._end_level(a)
            elif isinstance(a, CollectProfile):
                self._collect_profile(a)
        for gi in sorted(self._new_phases):
            ph = self.gpus[gi].phase
            if ph is not None:
                self.emit("profiling", gpu=gi, jobs=list(ph.jobs), levels=list(ph.levels))
        self._new_phases.clear()
        if actions:
            self._dirty = True
            self.save()

    def _note(self, a: Note) -> None:
        if a.kind == "decision":
            record = dict(a.fields)
            record["at_s"] = record.pop("time")
            record["time"] = round(self.clock(), 3)
            record["policy"] = self.policy.name
            self.journal.decision(record)
            # issue-12: the decision and its reason (why a job starts unprofiled, moves,
            # or is profiled) in the event stream and the live view, not only the journal
            self.emit(
                "decided",
                gpu=record["gpu"],
                mode=record["mode"],
                layout=record["layout"],
                jobs=sorted(record["assignment"]),
                reason=record["reason"],
            )
        elif a.kind == "profile_cancelled":
            g = self.gpus[int(a.fields["gpu"])]
            if g.phase is not None:
                self.emit("profile_cancelled", gpu=g.index, jobs=list(g.phase.jobs))
            g.phase = None
        else:
            self.emit(a.kind, **dict(a.fields))

    def snapshot(self) -> RunSnapshot:
        """What the live view shows of this run (it reads nothing else of the executor)."""
        gpus, profiling = [], set()
        pending = {g.index: g.pending for g in self.engine.gpus if g.pending is not None}
        for g in self.gpus:
            doing = ""
            if g.index in pending:
                doing = f"changing to {pending[g.index].target.mode} (jobs checkpointing)"
            elif g.phase is not None:
                profiling.update(g.phase.jobs)
                doing = (
                    f"profiling at {g.phase.level}% (level {g.phase.k + 1}/{len(g.phase.levels)})"
                )
            layout = g.layout.name if g.mode == "mig" else "whole GPU"
            gpus.append(GpuRow(g.index, g.name, g.mode, layout, doing))
        jobs = []
        for name in self.order:
            rec = self.journal.jobs[name]
            where = "-"
            if rec.gpu is not None:
                where = f"{rec.gpu}:{(rec.slice or {}).get('profile') or 'whole'}"
            state = rec.state
            if name in self.not_arrived:
                state = "not yet"
            if name in profiling and rec.state in ("running", "starting", "stopping", "waiting"):
                state = "profiling"
                where = f"{rec.gpu if rec.gpu is not None else '-'}:mps"
            usage = self.usage.get(name, {}) if rec.state == "running" else {}
            jobs.append(
                JobRow(
                    name,
                    state,
                    where,
                    journal_state=rec.state,
                    progress=dict(rec.progress or {}),
                    cpu_percent=usage.get("cpu_percent"),
                    rss_mb=usage.get("rss_mb"),
                )
            )
        return RunSnapshot(  # issue-15b: + step_time_scale, the event lines' time
            self.journal.run_id, self.policy.name, self.clock() - self.t0, gpus, jobs, self.scale
        )

    # ------------------------------------------------------------ profiles and predictions

    @property
    def scale(self) -> float:
        """Catalog time per wall second of synthetic jobs on simulated GPUs (1 on hardware)."""
        if not getattr(self.drv, "is_simulated", False):
            return 1.0
        return float(self.opt.speedup or 10.0)  # sim_train's default speed-up

    def prediction(self, name: str) -> Any:
        known = self.profiles.get(name)
        if known is None:
            return None
        if name not in self._predictions:
            if self._predict is None:
                from miso_cli.sim.simulator import make_predict

                model = self.gpus[0].model
                self._predict, _ = make_predict(self.opt.model_path, model, self.state_dir)
            mps = {int(k): float(v) for k, v in known["mps"].items()}
            mix = [{int(k): float(v) for k, v in m.items()} for m in known.get("mix", [])]
            self._predictions[name] = self._predict(mps, mix, self.specs[name].memory_mb)
        return self._predictions[name]

    def load_stored_profiles(self) -> None:
        """Jobs with a fresh stored profile start with a prediction (no profiling again)."""
        from miso_cli.spec import profiles_store as store

        if not self.gpus:
            return
        todo = [self.specs[n] for n in self.order if n not in self.profiles]
        try:
            fresh = store.fresh_profiles(
                self.state_dir,
                todo,
                gpu_model=self.gpus[0].model.key,
                driver_version=self.drv.driver_version(),
                levels=[float(lv) for lv in PROFILE_LEVELS],
            )
        except MisoError as exc:  # a damaged store file: profile the jobs again
            self.emit("note", message=f"stored profiles not used: {exc}")
            return
        for name, prof in fresh.items():
            mps = {lv: prof.step_time_s(float(lv)) for lv in PROFILE_LEVELS}
            self.profiles[name] = {
                "mps": {str(k): float(v) for k, v in mps.items() if v is not None},
                "mix": [],
                "jobs_in_mix": 1 + len(prof.co_runners),
                "step_time_7g_s": float(mps[100] or 0.0) / self.scale or None,
                "source": "stored",
                "fingerprint": prof.fingerprint,
            }
        if fresh:
            self.emit("profiles_reused", jobs=sorted(fresh))

    # ------------------------------------------------------------ GPUs

    def load_gpus(self) -> None:
        """Read every GPU's mode, layout and instance UUIDs from the driver."""
        self.gpus = []
        saved = {g["index"]: g for g in self.journal.data.get("gpus", [])}
        for i in range(self.drv.device_count()):
            info = self.drv.gpu(i)
            g = GpuState(i, info.uuid, info.name, self.drv.gpu_model(i))
            g.mig_enabled = bool(info.mig_current)
            if g.mig_enabled:
                self._refresh_instances(g)
            g.mode = saved.get(i, {}).get("mode") or ("mig" if g.mig_enabled else "full")
            if g.mode == "mig" and not g.mig_enabled:
                g.mode = "full"
            self.gpus.append(g)
        self._record_gpus()

    def _refresh_instances(self, g: GpuState) -> None:
        g.uuids = {}
        slices = []
        for inst in self.drv.instances(g.index):
            slices.append(inst.slice)
            g.uuids[inst.slice] = inst.uuid
        g.layout = Layout.of(slices)

    def _record_gpus(self) -> None:
        self.journal.data["gpus"] = [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "model": g.model.key,
                "compute_slices": g.model.compute_slices,
                "mode": g.mode,
                "mig_enabled": g.mig_enabled,
                "layout": g.layout.name if g.mig_enabled else None,
                "instances": [
                    {**(slice_json(s) or {}), "uuid": g.uuids.get(s)} for s in g.layout.slices
                ],
            }
            for g in self.gpus
        ]

    def _full_slice(self, g: GpuState) -> Slice:
        p = g.model.full_profile
        pl = p.placements[0]
        return Slice(pl.start, pl.size, p.name, p.slices)

    def _set_layout(self, g: GpuState, layout: Layout, reason: str) -> None:
        from miso_cli.gpu.apply import apply_layout

        if not g.mig_enabled:
            change = self.drv.set_mig_mode(g.index, True)
            if not getattr(change, "current", True):
                raise MisoError(
                    change.message(g.index, True),
                    hint="enable it once with: miso apply --mig on, then reset the GPU"
                    if getattr(change, "needs_reset", True)
                    else "stop the processes or services holding the GPU, then run again",
                    code="NO_GPU",
                    exit_code=4,  # type: ignore[arg-type]
                )
            g.mig_enabled = True
            self.emit("mig_mode", gpu=g.index, enabled=True)
        before = g.layout.name
        if g.layout != layout:
            apply_layout(self.drv, g.index, layout)
        self._refresh_instances(g)
        if g.layout != layout:
            raise MisoError(
                f"GPU {g.index}: layout is {g.layout.name} after applying {layout.name}",
                code="INCONSISTENT",
                exit_code=10,  # type: ignore[arg-type]
            )
        if before != g.layout.name:
            self.emit(
                "layout_changed", gpu=g.index, layout=g.layout.name, before=before, reason=reason
            )
        self._record_gpus()

    # ------------------------------------------------------------ applying a target

    def _reconfigure(self, a: Reconfigure) -> None:
        """Make a GPU what the engine's target wants, once the jobs it stops have drained."""
        g = self.gpus[a.gpu]
        self.emit("reconfiguring", gpu=g.index, mode=a.mode, reason=a.reason)
        if g.daemon is not None and a.mode != "mps":
            self._stop_daemon(g)
        if a.mode == "mig":
            self._set_layout(g, a.layout, a.reason)
        elif g.mig_enabled and (a.wanted or a.mode == "mps"):
            # MIG stays on: a whole GPU is its one full-size instance.
            self._set_layout(g, Layout.of([self._full_slice(g)]), a.reason)
        if g.mode != a.mode:
            self.emit("gpu_mode", gpu=g.index, mode=a.mode, reason=a.reason)
        g.mode = a.mode
        self._record_gpus()
        if a.mode == "mps":
            self._open_daemon(g)
            g.shares = {n: v for n, v in g.shares.items() if n in a.wanted}
        else:
            g.shares = {}
        g.phase = None
        if a.profile_s:
            level_s = float(a.profile_s) / len(PROFILE_LEVELS) / self.scale
            g.phase = ProfilePhase(g.index, [], level_s=level_s, started_at=self.clock())
            self._new_phases.add(g.index)

    def _start_action(self, a: Start) -> None:
        g = self.gpus[a.gpu]
        rec = self.journal.jobs[a.job]
        if rec.state in ACTIVE or rec.terminal:
            return
        device = self._device(g, a.slice, a.job)
        mps_env = None
        if g.mode == "mps":
            share = float(a.share or 100)
            g.shares[a.job] = share
            if g.daemon is not None:
                mps_env = g.daemon.client_env(share)
        ph = g.phase
        if a.level is not None and ph is not None:
            if a.job not in ph.jobs:
                ph.jobs.append(a.job)
            k = ph.levels.index(a.level)
            if ph.k != k or ph.level_started is None:
                ph.k = k
                ph.begin_level(self.clock())
            ph.samples.setdefault(a.job, [])
            ph.seen.setdefault(a.job, 0)
        self.start(a.job, g, a.slice if g.mode == "mig" else None, device, mps_env=mps_env)
        if rec.state == "failed":  # it could not be started at all
            self.facts.append(Ended(a.job, "failed", rec.reason))

    def _device(self, g: GpuState, sl: Slice | None, name: str) -> str:
        if g.mode == "mig":
            assert sl is not None
            device = g.uuids.get(sl)
            if device is None:
                raise UsageError(
                    f"policy {self.policy.name} put {name} on {sl.key}, "
                    f"not an instance of GPU {g.index} ({g.layout.name})"
                )
            return device
        if g.mig_enabled:
            return g.uuids[self._full_slice(g)]
        return g.uuid

    # ------------------------------------------------------------ MPS

    def _open_daemon(self, g: GpuState) -> None:
        if g.daemon is not None:
            return
        from miso_cli.gpu import mps

        device = self._device(g, None, "")
        daemon = mps.open_daemon(
            self.state_dir,
            device,
            simulated=self.drv.is_simulated,
            sim_state=self.drv.sim_state_path,
        )
        daemon.start()
        g.daemon = daemon
        self.emit("mps_daemon", gpu=g.index, device=device, pid=daemon.pid, running=True)
        for note in daemon.notes:
            self.emit("note", message=note)

    def _stop_daemon(self, g: GpuState) -> None:
        if g.daemon is None:
            return
        daemon, g.daemon = g.daemon, None
        try:
            daemon.stop()
        finally:
            self.emit("mps_daemon", gpu=g.index, device=daemon.device, running=False)

    def stop_daemons(self) -> None:
        """Shut down every MPS daemon this run started (on exit, interrupt or error)."""
        for g in self.gpus:
            g.phase = None
            try:
                self._stop_daemon(g)
            except MisoError as exc:
                self.emit("note", message=f"GPU {g.index}: {exc}")

    def _clear_stale_daemons(self) -> None:
        """After a crash: the daemons of GPUs left in MPS mode, with nobody to serve."""
        from miso_cli.gpu import mps

        for g in self.gpus:
            if g.mode != "mps":
                continue
            try:
                device = self._device(g, None, "")
            except (KeyError, UsageError):
                device = g.uuid
            daemon = mps.open_daemon(
                self.state_dir,
                device,
                simulated=self.drv.is_simulated,
                sim_state=self.drv.sim_state_path,
            )
            state = mps.inspect(daemon.dirs.pipe)
            if state.running:
                try:
                    daemon.command("quit")
                except MisoError:
                    pass
                deadline = time.monotonic() + 10.0
                while mps.inspect(daemon.dirs.pipe).running and time.monotonic() < deadline:
                    time.sleep(0.1)
                if state.pid and mps.inspect(daemon.dirs.pipe).running:
                    launch.kill_group(state.pid)
                self.emit("mps_daemon", gpu=g.index, device=device, running=False, stale=True)
            g.mode = "full"
        self._record_gpus()

    # ------------------------------------------------------------ profiling

    def step_profiles(self, now: float) -> None:
        """Collect the step times of the jobs a profiling phase measures (the engine
        decides when each level ends)."""
        for g in self.gpus:
            ph = g.phase
            if ph is None or ph.level_started is None:
                continue
            for name in ph.jobs:
                if self.journal.jobs[name].state != "running":
                    continue
                tracker = self._tracker(name)
                tracker.poll(now)
                for t, step in list(tracker.timer.samples):
                    ph.add(name, t, step)
            if ph.jobs and all(len(ph.samples.get(j, ())) > MIN_INTERVALS for j in ph.jobs):
                self.engine.level_ready(g.index)

    def _end_level(self, a: EndLevel) -> None:
        g = self.gpus[a.gpu]
        ph = g.phase
        if ph is None:
            return
        self.step_profiles(self.clock())
        ph.k = ph.levels.index(a.level)
        ph.close_level()
        self.emit(
            "profile_level",
            gpu=g.index,
            level=ph.level,
            step_time_s={
                n: round(ph.measured[n][ph.level] * self.scale, 6)
                for n in ph.jobs
                if ph.level in ph.measured.get(n, {})
            },
        )
        ph.level_started = None

    def _collect_profile(self, a: CollectProfile) -> None:
        """Store what the phase measured, predict from it, and tell the engine."""
        from miso_cli.runtime.mps_phase import stored_profile
        from miso_cli.spec import profiles_store as store

        g = self.gpus[a.gpu]
        ph = g.phase
        g.phase = None
        names = [n for n in a.jobs if ph is not None and n in ph.jobs]
        done = [n for n in names if ph is not None and ph.complete(n)]
        info = self.drv.gpu(g.index)
        driver = self.drv.driver_version()
        measured: dict[str, dict[int, float]] = {}
        for name in done:
            assert ph is not None
            scaled = {lv: ph.measured[name][lv] * self.scale for lv in PROFILE_LEVELS}
            measured[name] = {lv: v * 1000.0 for lv, v in scaled.items()}  # ms, catalog time
            others = [o for o in done if o != name]
            entry = {
                "mps": {str(lv): v for lv, v in scaled.items()},
                "mix": [
                    {str(lv): ph.measured[o][lv] * self.scale for lv in PROFILE_LEVELS}
                    for o in others
                ],
                "jobs_in_mix": len(done),
                "step_time_7g_s": scaled[100],
                "source": "measured",
                "fingerprint": store.fingerprint(self.specs[name]),
            }
            self.profiles[name] = entry
            self._predictions.pop(name, None)
            self._know_profile(self.engine.jobs[name])
            try:
                store.save(
                    self.state_dir,
                    stored_profile(
                        self.specs[name],
                        co_runners=[self.specs[o] for o in others],
                        step_times_s=scaled,
                        steps=ph.counts.get(name, {}),
                        gpu_model=g.model.key,
                        gpu_name=info.name,
                        driver_version=driver,
                        simulated=bool(self.drv.is_simulated),
                        started_at=ph.started_at,
                    ),
                )
            except OSError as exc:
                self.emit("note", message=f"profile of {name} not stored: {exc}")
        predictions = {}
        for name in done:
            pred = self.prediction(name)
            predictions[name] = {str(k): round(v, 3) for k, v in pred.relative.items()}
        self.emit(
            "profiled",
            gpu=g.index,
            jobs=done,
            missing=[n for n in names if n not in done],
            mps_step_time_s={n: self.profiles[n]["mps"] for n in done},
            prediction=predictions,
        )
        self._dirty = True
        self.facts.append(Profiled(g.index, measured))

    # ------------------------------------------------------------ starting

    def _values(self, name: str, attempt: int) -> dict[str, Any]:
        return {
            "checkpoint_dir": str(self.journal.checkpoint_dir(name)),
            "job": name,
            "attempt": attempt,
        }

    def start(
        self,
        name: str,
        g: GpuState,
        sl: Slice | None,
        device: str,
        *,
        mps_env: dict[str, str] | None = None,
    ) -> None:
        spec, rec = self.specs[name], self.journal.jobs[name]
        rec.attempt += 1
        resume = rec.attempt > 1
        now = self.clock()
        job_dir = self.journal.job_dir(name)
        ckpt = self.journal.checkpoint_dir(name)
        progress_file = self.journal.progress_file(name)
        # issue-11: made and handed over without following a link the job planted
        launch.prepare_job_files(
            self.journal.run_dir, job_dir, ckpt, progress_file, self.opt.run_as
        )
        extra = {
            "MISO_PROGRESS_FILE": str(progress_file),
            "MISO_CHECKPOINT_DIR": str(ckpt),
            "MISO_RUN_ID": self.journal.run_id,
        }
        if self.drv.is_simulated and self.drv.sim_state_path is not None:
            extra["MISO_SIM_STATE"] = str(self.drv.sim_state_path)
        if self.opt.speedup is not None:
            extra["MISO_SIM_SPEEDUP"] = repr(float(self.opt.speedup))
        if mps_env:
            extra.update(mps_env)
        values = self._values(name, rec.attempt)
        argv = launch.job_argv(spec, resume=resume, values=values)
        env = launch.job_env(
            spec,
            base=os.environ,
            device=device,
            attempt=rec.attempt,
            resume=resume,
            values=values,
            extra=extra,
            run_as=self.opt.run_as,
        )
        where = f"GPU {g.index} {sl.profile}@{sl.start}" if sl else f"GPU {g.index} (whole)"
        pct = (mps_env or {}).get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if pct:
            where += f" under MPS at {pct}%"
        header = (
            f"\n=== miso: {name} attempt {rec.attempt} on {where} ({device}) at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} ===\n"
        )
        rec.state = "starting"
        rec.gpu, rec.slice, rec.instance_uuid = g.index, slice_json(sl), device
        rec.stop_reason, rec.stop_deadline = None, None
        self.save()  # a crash from here on finds the wrapper by its tag
        try:
            launched = launch.launch(
                spec,
                argv=argv,
                env=env,
                log_path=self.journal.log_path(name),
                exit_file=self.journal.exit_file(name, rec.attempt),
                tag=self._tag(name, rec.attempt),
                header=header,
                run_as=self.opt.run_as,
            )
        except OSError as exc:
            rec.state = "failed"
            rec.reason = f"cannot start: {exc.strerror or exc}"
            rec.ended_at = now
            self.emit("failed", job=name, reason=rec.reason)
            self.save()
            return
        rec.pid, rec.create_time = launched.pid, launched.create_time
        rec.state = "running"
        rec.started_at = now
        if rec.first_started_at is None:
            rec.first_started_at = now
        rec.attempts.append(
            Attempt(
                number=rec.attempt,
                gpu=g.index,
                slice=sl.profile if sl else None,
                slices=sl.slices if sl else g.model.compute_slices,
                started_at=now,
                resumed=resume,
            )
        )
        if launched.popen is not None:
            self.popens[name] = launched.popen
        tracker = self._tracker(name)
        tracker.restart(launched.log_offset)
        rec.log_offset = launched.log_offset
        rec.reason = ""
        self.save()
        self.emit(
            "started",
            job=name,
            attempt=rec.attempt,
            gpu=g.index,
            slice=sl.profile if sl else None,
            device=device,
            pid=launched.pid,
            resumed=resume,
            mps=float(pct) if pct else None,
        )

    def _tag(self, name: str, attempt: int) -> str:
        return f"{self.journal.run_id}/{name}/{attempt}"

    def _tracker(self, name: str) -> ProgressTracker:
        if name not in self.trackers:
            spec, rec = self.specs[name], self.journal.jobs[name]
            self.trackers[name] = ProgressTracker(
                self.journal.log_path(name),
                self.journal.progress_file(name),
                kind=spec.progress,
                regex=spec.progress_regex,
                steps=spec.steps,
                log_offset=rec.log_offset,
                file_offset=rec.file_offset,
            )
            p = rec.progress
            if p:
                self.trackers[name].progress.step = p.get("step")
                if p.get("total") is not None:
                    self.trackers[name].progress.total = p.get("total")
        return self.trackers[name]

    # ------------------------------------------------------------ stopping

    def stop_jobs(self, names: list[str], reasons: dict[str, str], *, wait: bool) -> None:
        """Ask each job to checkpoint (its signal), then kill what outlives its grace."""
        now = self.clock()
        asked = []
        for name in names:
            rec, spec = self.journal.jobs[name], self.specs[name]
            if rec.state not in ACTIVE:
                continue
            if rec.state != "stopping":
                rec.state = "stopping"
                rec.stop_reason = reasons[name]
                rec.stop_deadline = now + spec.grace_s
                asked.append(name)
            elif reasons[name] in ("interrupt", "hang", "cancel"):
                rec.stop_reason = reasons[name]
        # Journal the requests before sending them: if miso dies in between, a resumed
        # run knows a job that exited 0 was checkpointing on request, not finished.
        self.save()
        for name in asked:
            rec, spec = self.journal.jobs[name], self.specs[name]
            if rec.pid:
                launch.send(rec.pid, spec.stop_signal)
            self.emit(
                "stopping",
                job=name,
                reason=rec.stop_reason,
                signal=signal.Signals(spec.stop_signal).name,
                grace_s=spec.grace_s,
            )
        if not wait:
            return
        while any(self.journal.jobs[n].state == "stopping" for n in names):
            self.check_exits()
            self.enforce_deadlines()
            if any(self.journal.jobs[n].state == "stopping" for n in names):
                time.sleep(self.opt.poll_s)

    def enforce_deadlines(self) -> None:
        now = self.clock()
        for name, rec in self.journal.jobs.items():
            if (
                rec.state == "stopping"
                and rec.stop_deadline is not None
                and now >= rec.stop_deadline
            ):
                if rec.pid and launch.kill_group(rec.pid):
                    self.emit("killed", job=name, reason=f"grace period over ({rec.stop_reason})")
                rec.stop_deadline = now + 5.0  # kill again later if it still lingers
                if not self._alive(name):
                    self._ended(name, {"exit_code": None, "signal": int(signal.SIGKILL)})

    # ------------------------------------------------------------ exits

    def _alive(self, name: str) -> bool:
        rec = self.journal.jobs[name]
        popen = self.popens.get(name)
        if popen is not None:
            return popen.poll() is None
        return launch.is_alive(rec.pid, rec.create_time)

    def check_exits(self) -> list[str]:
        ended = []
        for name, rec in self.journal.jobs.items():
            if rec.state not in ACTIVE:
                continue
            exit_file = self.journal.exit_file(name, rec.attempt)
            info = launch.read_exit(exit_file)
            if info is None:
                if self._alive(name):
                    continue
                popen = self.popens.get(name)
                info = launch.read_exit(exit_file)  # written just before the wrapper exits
                if info is None:
                    rc = popen.returncode if popen is not None else None
                    info = {
                        "exit_code": rc if rc is not None and rc >= 0 else None,
                        "signal": -rc if rc is not None and rc < 0 else None,
                        "lost": popen is None,
                    }
            elif self.popens.get(name) is not None:
                self.popens[name].poll()  # reap the wrapper
            self._ended(name, info)
            ended.append(name)
        return ended

    def _ended(self, name: str, info: dict[str, Any]) -> None:
        rec, spec = self.journal.jobs[name], self.specs[name]
        if rec.state not in ACTIVE:
            return
        now = self.clock()
        self.popens.pop(name, None)
        tracker = self._tracker(name)
        tracker.poll(now)
        rec.progress = tracker.progress.to_json()
        rec.log_offset, rec.file_offset = tracker.log_offset, tracker.file_offset
        code, sig = info.get("exit_code"), info.get("signal")
        rec.exit_code = code
        attempt = rec.attempts[-1] if rec.attempts else None
        if attempt is not None:
            attempt.ended_at = float(info.get("ended_at") or now)
            attempt.exit_code, attempt.signal = code, sig
        complete = (
            tracker.progress.total is not None
            and tracker.progress.step is not None
            and tracker.progress.step >= tracker.progress.total
        )
        how = f"exit code {code}" if code is not None else f"signal {sig}" if sig else "unknown"
        reason = rec.stop_reason
        outcome = end_outcome(code, sig, reason, complete, lost=bool(info.get("lost")))
        if outcome == "lost":
            rec.state = "waiting"
            rec.reason = "its process vanished while miso was not watching; restarting"
        elif outcome == "finished":
            rec.state = "finished"
            rec.reason = ""
        elif outcome == "hung":
            rec.state = "hung"
            rec.reason = rec.reason or "no progress"
        elif outcome == "interrupted":
            rec.state = "interrupted"
            rec.reason = f"stopped on request ({how})"
        elif outcome == "cancelled":  # issue-15: miso cancel
            rec.state = "cancelled"
            rec.reason = f"cancelled by miso cancel ({how})"
        elif outcome == "stopped":
            rec.state = "waiting"
            rec.reason = f"stopped to {reason} ({how})"
        else:
            rec.failures += 1
            if rec.failures <= spec.retries:
                outcome, rec.state = "retry", "waiting"
                rec.reason = f"{how}; retry {rec.failures} of {spec.retries}"
            else:
                outcome, rec.state = "failed", "failed"
                rec.reason = how + (f" after {spec.retries} retries" if spec.retries else "")
                tail = _log_tail(self.journal.log_path(name))
                if tail:
                    rec.reason += f": {tail}"
        if attempt is not None:
            attempt.outcome = outcome
        if rec.terminal:
            rec.ended_at = now
        if rec.state == "waiting":
            rec.gpu, rec.slice, rec.instance_uuid = None, None, None
        rec.pid = None
        rec.stop_reason, rec.stop_deadline = None, None
        if attempt is not None and outcome in ("finished", "stopped"):
            self._observe(name, attempt, tracker.progress.step_time_s)
        self._dirty = True
        self.save()
        if self._engine is not None:  # what the engine hears of it (see Engine.step)
            fact = _FACTS.get(outcome, "failed")
            self.facts.append(Ended(name, fact, rec.reason))  # type: ignore[arg-type]
        fields = {"job": name, "exit_code": code, "signal": sig, "reason": rec.reason}
        if outcome == "finished":
            self.emit("finished", **fields)
        elif outcome in ("failed", "hung"):
            self.emit(outcome, **fields)
        elif outcome in ("interrupted", "cancelled"):
            self.emit(outcome, **fields)
        else:
            self.emit("requeued", outcome=outcome, **fields)

    def _observe(self, name: str, attempt: Attempt, step_time_s: float | None) -> None:
        """A job with an MPS profile ran on a MIG slice: keep what it did, to retrain on."""
        from miso_cli.predict.observations import record_observation
        from miso_cli.runtime.mps_phase import workload_name

        known = self.profiles.get(name)
        if known is None or attempt.slice is None or not step_time_s or attempt.gpu is None:
            return
        if attempt.gpu >= len(self.gpus):
            return
        model = self.gpus[attempt.gpu].model
        spec = self.specs[name]
        mps = {int(k): float(v) for k, v in known["mps"].items()}
        mix_size = int(known.get("jobs_in_mix", 1))
        t7 = whole_gpu_reference(mps, mix_size, attempt.slices, step_time_s * self.scale)
        try:
            path = record_observation(
                self.state_dir,
                gpu_model_key=model.key,
                workload=workload_name(spec),
                mps=mps,
                jobs_in_mix=mix_size,
                slices=attempt.slices,
                step_time_s=step_time_s * self.scale,
                step_time_7g_s=t7,
                memory_mb=spec.memory_mb,
            )
        except (MisoError, OSError) as exc:
            self.emit("note", message=f"observation of {name} not recorded: {exc}")
            return
        self.emit(
            "observed",
            job=name,
            slice=attempt.slice,
            slices=attempt.slices,
            step_time_s=round(step_time_s * self.scale, 6),
            file=str(path),
        )

    # ------------------------------------------------------------ watching

    def watch(self, now: float) -> None:
        """Progress of each running job, hang detection, process-tree usage."""
        for name, rec in self.journal.jobs.items():
            if rec.state not in ("running", "stopping"):
                continue
            tracker = self._tracker(name)
            advanced = tracker.poll(now)
            rec.progress = tracker.progress.to_json()
            rec.log_offset, rec.file_offset = tracker.log_offset, tracker.file_offset
            if advanced:
                last = self._last_progress_event.get(name, 0.0)
                if now - last >= self.opt.progress_event_s:
                    self._last_progress_event[name] = now
                    self.emit("progress", job=name, **_rounded(tracker.progress))
            if rec.state != "running":
                continue
            timeout = self.specs[name].hang_timeout_s or self.opt.hang_timeout_s
            since = max(
                t
                for t in (tracker.progress.updated_at, rec.started_at, tracker.output_at)
                if t is not None
            )
            if tracker.progress.step is not None and tracker.progress.updated_at is not None:
                since = max(tracker.progress.updated_at, rec.started_at or 0.0)
            if now - since > timeout:
                rec.reason = f"no progress for {now - since:.0f} s (hang timeout {timeout:g} s)"
                self.emit("hang", job=name, idle_s=round(now - since, 1), timeout_s=timeout)
                self.stop_jobs([name], {name: "hang"}, wait=False)

    def sample_usage(self) -> None:
        roots = {n: r.pid for n, r in self.journal.jobs.items() if r.state in ACTIVE and r.pid}
        self.usage = self.watcher.sample(roots) if roots else {}

    def save(self, *, force: bool = True) -> None:
        now = self.clock()
        if force or self._dirty or now - self._last_save >= self.opt.save_s:
            self.journal.data["measured"] = self.meter.to_json()
            if self._engine is not None:
                eng = self._engine
                self.journal.data["metrics"] = {
                    "reconfigurations": eng.reconfigurations,
                    "migrations": eng.migrations,
                    "oom_starts": eng.oom_starts,
                    # wall seconds, as the run's other figures
                    "restart_overhead_s": eng.restart_overhead_s / self.scale,
                }
            self.journal.save()
            self._last_save = now
            self._dirty = False

    # ------------------------------------------------------------ the loop

    def _schedule_arrivals(self) -> None:
        """Jobs still waiting whose arrival (``queued_at``) lies ahead of the clock."""
        now = self.clock()
        self.not_arrived = {
            name: self.journal.jobs[name].queued_at
            for name in self.order
            if self.journal.jobs[name].state == "waiting"
            and self.journal.jobs[name].queued_at > now
        }

    def arrivals(self, now: float) -> list[str]:
        """Jobs that join the queue by ``now``: each is an ``arrival`` for the policy.

        The one place where jobs enter a run in progress: jobs submitted from outside
        (an inbox) are to be added to the journal and the queue here.
        """
        self.take_requests()  # issue-15: miso submit / cancel / priority, from the inbox
        due = sorted((t, self.seq[n], n) for n, t in self.not_arrived.items() if t <= now)
        arrived = []
        for _, _, name in due:
            del self.not_arrived[name]
            arrived.append(name)
            self.emit("arrived", job=name)
            self.facts.append(core.Arrived(name))
        return arrived

    def take_requests(self) -> None:
        """issue-15: what miso submit/cancel/priority left in the run's inbox, journaled
        first, then removed from the inbox; new jobs join ``not_arrived`` (an arrival each)."""
        from miso_cli.operate import inbox

        got = inbox.absorb(self.journal, now=self.clock())
        if not got.changed:
            return
        self.specs = {j.name: j for j in self.journal.queue.jobs}
        self.order = [j.name for j in self.journal.queue.jobs]
        self.seq = {name: i for i, name in enumerate(self.order)}
        for name in got.arrived:
            self.not_arrived[name] = self.journal.jobs[name].queued_at
        for name in [n for n in self.not_arrived if self.journal.jobs[n].state != "waiting"]:
            del self.not_arrived[name]  # cancelled before it arrived
        eng = self.engine
        for name in self.order:
            rec = self.journal.jobs[name]
            if name not in eng.jobs:
                self._add_to_engine(eng, name)
            elif rec.terminal and eng.jobs[name].state in ("pending", "waiting"):
                eng.withdraw(name, rec.reason)
            elif eng.jobs[name].priority != self.specs[name].priority:
                eng.jobs[name].priority = self.specs[name].priority
                eng.touch(name)
        self.save()
        inbox.done(self.journal.run_dir, got.ids)
        for ev in got.events:
            self.emit(ev.pop("event"), **ev)
        self.stop_jobs(got.cancel_running, dict.fromkeys(got.cancel_running, "cancel"), wait=False)
        if got.reprioritised:
            self._perform(self._ask(eng.tick, self.now_s(), True))

    def start_run(self) -> None:
        """A fresh run: every queued job without a later ``arrival`` arrives now."""
        from miso_cli.operate.inbox import make_inbox

        make_inbox(self.journal.run_dir)  # issue-15: where miso submit leaves requests
        self.load_gpus()
        self.emit(
            "run_started",
            run_id=self.journal.run_id,
            policy=self.policy.name,
            jobs=list(self.order),
            gpus=self.journal.data["gpus"],
        )
        self.load_stored_profiles()
        self._schedule_arrivals()
        self._engine = self._build_engine()
        self.facts += [core.Arrived(n) for n in self.order if n not in self.not_arrived]
        self.step()

    def resume_run(self) -> None:
        """After a crash or an interruption: find jobs again, collect exits, restart the rest."""
        self.load_gpus()
        self.journal.status = "running"
        self.journal.data["miso_pid"] = os.getpid()
        found, collected, restarted = [], [], []
        for name in self.order:
            rec = self.journal.jobs[name]
            if rec.state == "interrupted":
                rec.state = "waiting"
                rec.gpu, rec.slice, rec.instance_uuid = None, None, None
                rec.ended_at = None
                restarted.append(name)
                continue
            if rec.state not in ACTIVE:
                continue
            if rec.pid and launch.is_alive(rec.pid, rec.create_time):
                found.append(name)
            else:
                again = launch.find_wrapper(self._tag(name, rec.attempt))
                if again is not None:
                    rec.pid, rec.create_time = again
                    if rec.state == "starting":
                        self._adopt_attempt(rec, again[1])
                    found.append(name)
                    continue
                info = launch.read_exit(self.journal.exit_file(name, rec.attempt))
                if rec.state == "starting":
                    if info is None:
                        # Crashed between journaling the start and launching: never ran.
                        rec.attempt -= 1
                        rec.state = "waiting"
                        rec.gpu, rec.slice, rec.instance_uuid = None, None, None
                        restarted.append(name)
                        continue
                    self._adopt_attempt(rec, float(info.get("started_at") or self.clock()))
                self._ended(name, info or {"exit_code": None, "signal": None, "lost": True})
                collected.append(name)
            if rec.state == "stopping" and rec.stop_deadline is not None:
                # miso may have died between journaling the request and sending it:
                # ask again (a second request to checkpoint is harmless), with a new grace.
                rec.stop_deadline = self.clock() + self.specs[name].grace_s
                if rec.pid and name in found:
                    launch.send(rec.pid, self.specs[name].stop_signal)
        # A GPU left in MPS mode lost its profiling phase (and miso's watch over its
        # daemon): its jobs checkpoint and go back to the queue, the daemon is shut down.
        under_mps = [
            n
            for n, r in self.journal.jobs.items()
            if r.state in ACTIVE
            and r.gpu is not None
            and r.gpu < len(self.gpus)
            and self.gpus[r.gpu].mode == "mps"
        ]
        if under_mps:
            self.stop_jobs(under_mps, dict.fromkeys(under_mps, "requeue"), wait=True)
            restarted.extend(n for n in under_mps if self.journal.jobs[n].state == "waiting")
        self._clear_stale_daemons()
        self.load_stored_profiles()
        self._schedule_arrivals()
        self.save()
        self.emit(
            "run_resumed",
            run_id=self.journal.run_id,
            running=found,
            collected=collected,
            restarting=restarted,
        )
        self._engine = self._build_engine(resumed=True)
        self._feed_progress()
        self._perform(self._ask(self.engine.resume, self.now_s()))
        self.step()

    def _adopt_attempt(self, rec: JobRecord, started_at: float) -> None:
        """A job launched just before a crash, before its start was journaled."""
        sl = slice_from_json(rec.slice)
        g = self.gpus[rec.gpu] if rec.gpu is not None and rec.gpu < len(self.gpus) else None
        rec.attempts.append(
            Attempt(
                number=rec.attempt,
                gpu=rec.gpu,
                slice=sl.profile if sl else None,
                slices=sl.slices if sl else (g.model.compute_slices if g else 0),
                started_at=started_at,
                resumed=rec.attempt > 1,
            )
        )
        rec.state = "running"
        rec.started_at = started_at
        if rec.first_started_at is None:
            rec.first_started_at = started_at

    def loop(self, should_stop: Callable[[], bool]) -> str:
        """Run until every job is done, or ``should_stop()``; the run's final status."""
        last_view = last_usage = 0.0
        while True:
            if should_stop():
                self.interrupt_all()
                return "interrupted"
            self.check_exits()
            self.enforce_deadlines()
            now = self.clock()
            self.step_profiles(now)
            self.arrivals(now)
            self.step()  # engine.rules.EVENT_ORDER: ended, profiled, then arrivals
            if now - last_view >= self.opt.view_s:
                last_view = now
                self.watch(now)
                if now - last_usage >= self.opt.usage_s:
                    last_usage = now
                    self.sample_usage()
                self._feed_progress()
                self._perform(self._ask(self.engine.tick, self.now_s()))
                self.save(force=False)
                self.sink({"event": "_refresh"})
                if not self.not_arrived and all(
                    r.state not in ACTIVE and r.state != "waiting"
                    for r in self.journal.jobs.values()
                ):
                    return "finished"
            time.sleep(self.opt.poll_s)

    def interrupt_all(self) -> None:
        for g in self.gpus:  # nothing more starts: phases end here
            g.phase = None
        self.facts = []
        names = [n for n, r in self.journal.jobs.items() if r.state in ACTIVE]
        self.emit("interrupting", jobs=names)
        self.stop_jobs(names, {n: "interrupt" for n in names}, wait=False)
        while any(self.journal.jobs[n].state in ACTIVE for n in names):
            self.check_exits()
            if self.interrupts >= 2:  # asked twice: do not wait for the grace periods
                for n in names:
                    rec = self.journal.jobs[n]
                    if rec.state in ACTIVE and rec.pid:
                        launch.kill_group(rec.pid)
                        rec.stop_deadline = self.clock()
            self.enforce_deadlines()
            time.sleep(self.opt.poll_s)
        self.save()


# How a process's end reaches the engine (an interrupted run tells it nothing more).
_FACTS = {
    "finished": "finished",
    "stopped": "stopped",
    "retry": "requeued",
    "lost": "requeued",
    "failed": "failed",
    "hung": "failed",
    "cancelled": "failed",
    "interrupted": "failed",
}


def _rounded(p: Progress) -> dict[str, Any]:
    out = {}
    for k, v in p.to_json().items():
        out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def _log_tail(path: Path, limit: int = 160) -> str:
    """The last non-empty line of a log, for a failure's reason."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.replace("\r", "\n").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("=== miso:")]
    return lines[-1][:limit] if lines else ""


def end_outcome(
    code: int | None, sig: int | None, stop_reason: str | None, complete: bool, *, lost: bool
) -> str:
    """How a job's process ended, from its exit and why miso was stopping it (if it was).

    One of ``lost``, ``finished``, ``hung``, ``interrupted``, ``stopped`` (to be moved or
    profiled at another level; it goes back to the queue) or ``failure`` (a retry or a
    failed job, by its retries left).
    """
    if lost and stop_reason is None:
        return "lost"
    if code == 0 and (stop_reason is None or complete):
        return "finished"
    if complete and sig is not None and stop_reason not in (None, "hang"):
        # It reached its last step as miso asked it to stop, and the stop signal ended
        # it on its way out: the work is done (its checkpoint may be gone already), so
        # starting it again would run it twice.
        return "finished"
    if stop_reason == "hang":
        return "hung"
    if stop_reason == "interrupt":
        return "interrupted"
    if stop_reason == "cancel":  # issue-15: miso cancel
        return "cancelled"
    if stop_reason in ("requeue", "migrate", "level"):
        return "stopped"
    return "failure"


def _refuse_sudo_on_simulated(drv: Any) -> None:
    """Under sudo, jobs run as the invoking user, who cannot reach root's private state
    (where a simulated GPU lives): refuse before anything starts, and say why."""
    if drv.is_simulated and launch.run_as_from_env(os.environ, os.geteuid()) is not None:
        raise UsageError(
            "simulated GPUs need no root, and under sudo the jobs (run as "
            f"{os.environ.get('SUDO_USER', 'the invoking user')}) could not reach them",
            hint="run miso without sudo for --gpu sim:...",
        )


# ---------------------------------------------------------------- the report


def run_report(journal: Journal) -> dict[str, Any]:
    """Per job: state, times, retries, slice; overall: makespan, mean JCT, slice utilisation."""
    t0 = journal.started_at
    jobs = []
    spans: list[tuple[int | None, int | None, float, float]] = []  # attempts that ended
    last_end = t0
    for job in journal.queue.jobs:
        rec = journal.jobs[job.name]
        run_s = sum((a.ended_at or a.started_at) - a.started_at for a in rec.attempts if a.ended_at)
        for a in rec.attempts:
            if a.ended_at:
                # An instance's slices, or None: the whole GPU (alone or under MPS).
                spans.append((a.gpu, _instance_slices(a), a.started_at, a.ended_at))
                last_end = max(last_end, a.ended_at)
        if rec.ended_at:
            last_end = max(last_end, rec.ended_at)
        last = rec.attempts[-1] if rec.attempts else None
        p = rec.progress or {}
        jobs.append(
            {
                "name": job.name,
                "state": rec.state,
                "queued_at": rec.queued_at,
                "started_at": rec.first_started_at,
                "ended_at": rec.ended_at,
                "queue_s": (rec.first_started_at - rec.queued_at) if rec.first_started_at else None,
                "run_s": run_s,
                "completion_s": (rec.ended_at - rec.queued_at)
                if rec.ended_at and rec.state == "finished"
                else None,
                "retries": min(rec.failures, job.retries),  # issue-15b: made, not failures
                "failures": rec.failures,
                "attempts": rec.attempt,
                "gpu": last.gpu if last else None,
                "slice": last.slice if last else None,
                "exit_code": rec.exit_code,
                "reason": rec.reason,
                "steps": p.get("step"),
                "total_steps": p.get("total"),
                "step_time_s": p.get("step_time_s"),
                "log": str(journal.log_path(job.name)),
            }
        )
    gpu_slices = {
        int(g["index"]): int(g.get("compute_slices", 7))
        for g in journal.data.get("gpus", [])
        if "index" in g
    }
    busy = rules.busy_slice_seconds(spans, gpu_slices)  # compute-slice seconds used by jobs
    metrics = journal.data.get("metrics", {})
    # The figures miso simulate reports, computed by the same function (engine.core.summary).
    figures = core.summary(
        journal.data["policy"]["name"],
        [
            _Times(
                rec.queued_at - t0,
                None if rec.first_started_at is None else rec.first_started_at - t0,
                (_finished_at(rec) - t0) if rec.ended_at and rec.state == "finished" else None,
            )
            for rec in (journal.jobs[job.name] for job in journal.queue.jobs)
        ],
        reconfigurations=int(metrics.get("reconfigurations", 0)),
        migrations=int(metrics.get("migrations", 0)),
        restart_overhead_s=float(metrics.get("restart_overhead_s", 0.0)),
        oom_starts=int(metrics.get("oom_starts", 0)),
        busy_slice_s=busy,
        capacity_slices=sum(gpu_slices.values()),
    )
    if not any(j["state"] == "finished" for j in jobs):  # nothing finished: till the end
        ended = journal.data.get("ended_at") or last_end
        figures["makespan_s"] = max(0.0, float(ended) - t0)
    util = figures["slice_utilisation"]
    states = [j["state"] for j in jobs]
    return {
        "run_id": journal.run_id,
        "status": journal.status,
        "policy": journal.data["policy"]["name"],
        "gpu_spec": journal.data.get("gpu_spec"),
        "started_at": t0,
        "ended_at": journal.data.get("ended_at"),
        "gpus": journal.data.get("gpus", []),
        "jobs": jobs,
        "summary": {
            "jobs": len(jobs),
            "finished": states.count("finished"),
            "failed": sum(states.count(s) for s in ("failed", "hung")),
            "other": sum(1 for s in states if s not in ("finished", "failed", "hung")),
            "makespan_s": figures["makespan_s"],
            "mean_jct_s": figures["mean_jct_s"],
            "p95_jct_s": figures["p95_jct_s"],
            "mean_queue_s": figures["mean_queue_s"],
            "slice_utilisation": min(1.0, util) if util is not None else None,
            "reconfigurations": figures["reconfigurations"],
            "migrations": figures["migrations"],
            "restart_overhead_s": figures["restart_overhead_s"],
            "oom_starts": figures["oom_starts"],
        },
        "run_dir": str(journal.run_dir),
        "report_file": str(journal.report_path),
    }


def _finished_at(rec: JobRecord) -> float:
    """When a finished job's process exited (its last attempt's end, as the exit file
    says), not when miso noticed: the figure the simulator's finish time is."""
    last = rec.attempts[-1] if rec.attempts else None
    if last is not None and last.ended_at and last.outcome == "finished":
        return min(float(last.ended_at), float(rec.ended_at or last.ended_at))
    return float(rec.ended_at or 0.0)


@dataclass(frozen=True)
class _Times:
    """A job's times as :func:`miso_cli.engine.core.summary` reads them (from the start)."""

    arrival_s: float
    start_s: float | None
    finish_s: float | None


def _instance_slices(a: Attempt) -> int | None:
    """Compute slices of the MIG instance an attempt ran on; None for a whole GPU or MPS."""
    if a.slice is None:
        return None
    return a.slices


def whole_gpu_reference(
    mps: dict[int, float], jobs_in_mix: int, slices: int, step_time_s: float
) -> float | None:
    """The job's step time on a whole GPU (7g), when an observation tells it.

    Measured on 7g itself, it is that. Alone under MPS at 100% a job has the whole
    GPU, and in the published A100 measurements its step time there equals its
    time on 7g. A co-located profile is slowed by its co-runners, so it gives none.
    """
    if slices == 7:
        return step_time_s
    if jobs_in_mix == 1 and mps.get(100):
        return float(mps[100])
    return None


# ---------------------------------------------------------------- one whole run


@dataclass
class RunRequest:
    queue_path: Path | None
    state_dir: Path
    gpu_spec: str | None
    policy: str = "miso+"
    layout: list[str] | None = None
    model_path: Path | None = None  # the predictor for profiled jobs
    resume: bool = False
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S
    speedup: float | None = None
    restart_cost_s: float = DEFAULT_RESTART_S


def _open_driver(spec: str | None, state_dir: Path) -> Any:
    from miso_cli.gpu.nvml import open_driver

    return open_driver(spec, state_dir)


def _check_fits(queue: Any, drv: Any, policy: Policy) -> None:
    """Before anything starts: the layout fits each GPU, and every job fits some instance."""
    from miso_cli.gpu.layouts import LayoutError
    from miso_cli.policy.simple import FixedLayout
    from miso_cli.spec.queue import check_memory

    best_mb, what = 0.0, ""
    for i in range(drv.device_count()):
        model = drv.gpu_model(i)
        if isinstance(policy, FixedLayout):
            info = drv.gpu(i)
            current = drv.current_layout(i) if info.mig_current else None
            view = GpuView(
                i, model, mode="mig" if current else "full", layout=current or Layout(())
            )
            try:
                layout = policy.layout_for(view)
            except LayoutError as exc:
                raise BadInput(  # issue-15b: as miso apply says it (exit 3)
                    f"--layout: {exc}", hint="see 'miso layouts' for what fits"
                ) from None
            if layout is None:
                continue
            for sl in layout.slices:
                mb = model.profile(sl.profile).memory_mb
                if mb > best_mb:
                    best_mb, what = mb, f"the largest instance of --layout ({sl.profile})"
        elif model.memory_mb > best_mb:
            best_mb, what = model.memory_mb, f"a whole {model.name}"
    if best_mb:
        check_memory(queue, best_mb, what)


def _load_predict(policy: Policy, drv: Any, model_path: str | Path | None, state_dir: Path) -> Any:
    """The predictor of a policy that predicts from profiles (None for the others)."""
    if getattr(policy, "knowledge", "none") != "profile" or drv.device_count() == 0:
        return None
    from miso_cli.sim.simulator import make_predict

    path = Path(model_path) if model_path else None
    predict, meta = make_predict(path, drv.gpu_model(0), state_dir)
    predict.metadata = meta  # type: ignore[attr-defined]  # issue-15b: which model, said below
    return predict


def _warm_up(policy: Policy) -> None:
    """What a policy needs loaded (the solver's import takes seconds), before jobs start."""
    warm_up = getattr(policy, "warm_up", None)
    if warm_up is not None:
        warm_up()


def run_queue(
    req: RunRequest,
    *,
    sink: EventSink,
    on_executor: Callable[[Executor], None] | None = None,
) -> dict[str, Any]:
    """Validate, then run (or resume) a queue to the end; returns the report.

    SIGINT/SIGTERM ask the jobs to checkpoint and stop; the report's status is
    then ``interrupted``.
    """
    from miso_cli.policy import registry
    from miso_cli.runtime.journal import RunLock
    from miso_cli.runtime.locks import hold_all  # issue-11
    from miso_cli.runtime.retry import RetryingDriver  # issue-11
    from miso_cli.spec.queue import load_queue

    state_dir = Path(req.state_dir)
    lock = RunLock(state_dir)
    lock.acquire()
    gpu_hold = contextlib.ExitStack()  # the GPU locks (runtime.locks), once opened
    try:
        if req.resume:
            journal = Journal.open(state_dir)
            spec = journal.data.get("gpu_spec")
            if req.gpu_spec is not None and req.gpu_spec != spec:
                raise UsageError(
                    f"--gpu {req.gpu_spec}: run {journal.run_id} ran on {spec or 'nvml'}",
                    hint="resume it with the same --gpu, or leave --gpu out",
                )
            pol = journal.data["policy"]
            policy = registry.get(pol["name"], **pol.get("options", {}))
            opts = journal.data.get("options", {})
            hang = float(opts.get("hang_timeout_s", req.hang_timeout_s))
            speedup = opts.get("speedup", req.speedup)
            restart_cost = float(opts.get("restart_cost_s", req.restart_cost_s))
            model_path = opts.get("model_path") or req.model_path
            drv = _open_driver(spec, state_dir)
            hold_all(gpu_hold, drv, "run")  # issue-11: one miso at a time changes a GPU
            if journal.status == "finished":
                return run_report(journal)
            predict = _load_predict(policy, drv, model_path, state_dir)
            _warm_up(policy)
        else:
            if req.queue_path is None:
                raise UsageError("a queue file is needed", hint="miso run QUEUE.toml")
            queue = load_queue(req.queue_path)
            previous = Journal.latest_id(state_dir)
            if previous is not None:
                try:
                    old = Journal.open(state_dir, previous)
                except MisoError:
                    old = None
                if old is not None and old.status == "running":
                    raise UsageError(
                        f"run {previous} in {state_dir} did not finish (miso was stopped)",
                        hint="continue it with: miso run --resume",
                    )
            options = {"layout": req.layout} if req.layout else {}
            if req.policy == "oracle":
                raise UsageError(
                    "--policy oracle needs every job's true speed on every slice size, "
                    "which a real run cannot know in advance",
                    hint="compare it with 'miso simulate'; miso+ (the default) measures "
                    "the jobs under MPS instead",
                )
            policy = registry.get(req.policy, **options)
            drv = _open_driver(req.gpu_spec, state_dir)
            hold_all(gpu_hold, drv, "run")  # issue-11: one miso at a time changes a GPU
            _refuse_sudo_on_simulated(drv)
            _check_fits(queue, drv, policy)
            hang, speedup, model_path = req.hang_timeout_s, req.speedup, req.model_path
            restart_cost = req.restart_cost_s
            # The predictor is loaded now, not when the first profile comes in: a model
            # that cannot be used must stop the run before a journal or a job exists.
            predict = _load_predict(policy, drv, model_path, state_dir)
            _warm_up(policy)  # before the run's clock starts: it counts in every job's JCT
            journal = Journal.create(
                state_dir,
                queue,
                gpu_spec=req.gpu_spec,
                policy=req.policy,
                policy_options=options,
                options={
                    "hang_timeout_s": hang,
                    "speedup": speedup,
                    "model_path": str(req.model_path) if req.model_path else None,
                    "restart_cost_s": restart_cost,
                },
            )
        run_as = launch.run_as_from_env(os.environ, os.geteuid())
        drv = RetryingDriver(drv)  # type: ignore[assignment]  # issue-11: transient NVML errors
        ex = Executor(
            drv,
            policy,
            journal,
            options=ExecutorOptions(
                hang_timeout_s=hang,
                speedup=speedup,
                run_as=run_as,
                model_path=Path(model_path) if model_path else None,
                restart_cost_s=restart_cost,
            ),
            sink=sink,
        )
        if predict is not None:
            ex._predict = predict
        drv.on_retry = lambda call, n, exc, pause: ex.emit(  # type: ignore[attr-defined]
            "nvml_retry", call=call, attempt=n, error=str(exc), pause_s=pause
        )  # issue-11: every retry of a transient NVML error is journaled
        if on_executor is not None:
            on_executor(ex)

        def on_signal(signum: int, frame: object) -> None:
            ex.interrupts += 1

        previous_handlers = {
            s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if req.resume:
                ex.resume_run()
            else:
                ex.start_run()
            if predict is not None:  # issue-15b: every command that predicts says with what
                from miso_cli.predict import predictor_line

                ex.emit("note", message=predictor_line(getattr(predict, "metadata", None)))
            status = ex.loop(lambda: ex.interrupts > 0)
        except BaseException:
            # Whatever went wrong, leave no job behind unsupervised and say so.
            journal.status = "interrupted"
            journal.data["ended_at"] = time.time()
            try:
                ex.interrupt_all()
            finally:
                ex.stop_daemons()
                journal.save()
                journal.close()
            raise
        finally:
            for s, h in previous_handlers.items():
                signal.signal(s, h)
        ex.stop_daemons()
        failed = any(r.state in ("failed", "hung") for r in journal.jobs.values())
        journal.status = (
            "interrupted" if status == "interrupted" else ("failed" if failed else "finished")
        )
        journal.data["ended_at"] = time.time()
        journal.save()
        report = run_report(journal)
        from miso_cli.runtime.state import atomic_write_json

        atomic_write_json(journal.report_path, report)
        ex.emit("run_ended", status=journal.status, summary=report["summary"])
        journal.close()
        drv.close()
        return report
    finally:
        gpu_hold.close()  # issue-11
        lock.release()
