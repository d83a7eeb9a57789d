"""Measuring jobs under MPS at a few active-thread percentages.

MISO's observation: how a job runs under MPS at 100, 50 and 14 % of the SMs
predicts how it runs on MIG slices, and MPS needs no reconfiguration. Two
modes:

* ``colocated`` (MISO's): the jobs, up to seven per group, run together under
  one MPS daemon, all at each level in turn, so each is measured under the
  interference it will meet (default levels 100, 50, 14);
* ``solo``: each job alone at each level (default: the slices' shares, 100,
  57, 43, 29, 14); slower and cleaner.

Each job is started the way ``miso run`` starts it (:mod:`miso_cli.runtime.launch`,
pinned to the device, in its own process group, its log kept) with
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set, and followed with
:class:`miso_cli.runtime.progress.ProgressTracker`. Per level: the first
``warmup_steps`` steps are skipped, then the step time is the median of the
reported intervals; a level ends when every job has ``min_steps`` measured
steps, or at ``max_level_s`` (status ``timeout`` for the jobs short of it). A
job's peak GPU memory is the largest its processes hold according to NVML
(where the driver reports per-process memory), else the figure its log
reports (``peak memory: 1234 MiB``), else nothing.

Between levels a job with checkpoint settings is asked to save (its signal,
its grace) and resumes from its save at the next level; others are stopped
and start over. A job that fails or runs out of memory at a level is
recorded so and not started again at the next levels (``skipped``). Every job
process is stopped and the MPS daemon shut down on return, on errors and on
Ctrl-C.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import GpuBusy, UsageError
from miso_cli.spec.queue import JobSpec

MODES = ("colocated", "solo")
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "colocated": (100.0, 50.0, 14.0),
    "solo": (100.0, 57.0, 43.0, 29.0, 14.0),
}
MAX_COLOCATED = 7  # jobs per MPS daemon in MISO's profiling (one per compute slice)
STATUSES = ("ok", "oom", "failed", "timeout", "skipped")

_OOM = re.compile(
    r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|RESOURCE_EXHAUSTED|"
    r"cudaErrorMemoryAllocation",
    re.IGNORECASE,
)
_PEAK = re.compile(
    r"peak[ _-]?(?:gpu[ _-]?)?mem(?:ory)?[^0-9\n]{0,20}(?P<v>[0-9]+(?:\.[0-9]+)?)\s*"
    r"(?P<u>MiB|MB|GiB|GB)?",
    re.IGNORECASE,
)


@dataclass
class LevelResult:
    """One job at one active-thread percentage."""

    level: float
    status: str  # one of STATUSES
    step_time_s: float | None = None  # median after warm-up (scaled back by --speedup)
    steps: int = 0  # steps measured after warm-up
    peak_memory_mb: float | None = None
    memory_source: str | None = None  # "nvml" or "job"
    wall_s: float = 0.0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "status": self.status,
            "step_time_s": self.step_time_s,
            "steps": self.steps,
            "peak_memory_mb": self.peak_memory_mb,
            "memory_source": self.memory_source,
            "wall_s": round(self.wall_s, 3),
            "reason": self.reason,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> LevelResult:
        return LevelResult(
            level=float(data["level"]),
            status=str(data["status"]),
            step_time_s=data.get("step_time_s"),
            steps=int(data.get("steps") or 0),
            peak_memory_mb=data.get("peak_memory_mb"),
            memory_source=data.get("memory_source"),
            wall_s=float(data.get("wall_s") or 0.0),
            reason=data.get("reason"),
        )


@dataclass
class JobProfile:
    """What profiling measured for one job."""

    job: str
    fingerprint: str
    mode: str
    workload: str | None
    co_runners: list[str]  # names of the jobs profiled alongside (co-located mode)
    levels: list[LevelResult] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    reused: bool = False  # taken from the store, not measured now

    def step_time_s(self, level: float) -> float | None:
        for r in self.levels:
            if abs(r.level - level) < 1e-6 and r.status == "ok":
                return r.step_time_s
        return None

    @property
    def peak_memory_mb(self) -> float | None:
        values = [r.peak_memory_mb for r in self.levels if r.peak_memory_mb]
        return max(values) if values else None

    @property
    def ok(self) -> bool:
        return bool(self.levels) and all(r.status == "ok" for r in self.levels)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "fingerprint": self.fingerprint,
            "mode": self.mode,
            "workload": self.workload,
            "co_runners": self.co_runners,
            "reused": self.reused,
            "step_time_s": {f"{r.level:g}": r.step_time_s for r in self.levels},
            "status": {f"{r.level:g}": r.status for r in self.levels},
            "peak_memory_mb": self.peak_memory_mb,
            "levels": [r.to_json() for r in self.levels],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class ProfileSettings:
    mode: str = "colocated"
    levels: tuple[float, ...] | None = None  # None: DEFAULT_LEVELS[mode]
    warmup_steps: int = 3
    min_steps: int = 20
    max_level_s: float = 30.0
    poll_s: float = 0.25
    stop_grace_s: float | None = None  # None: each job's checkpoint grace (30 s default)
    speedup: float | None = None  # simulated GPUs: synthetic jobs run this much faster
    gpu_index: int = 0

    def resolved_levels(self) -> tuple[float, ...]:
        if self.mode not in MODES:
            raise UsageError(f"--mode: {self.mode!r} is not one of {', '.join(MODES)}")
        levels = self.levels if self.levels else DEFAULT_LEVELS[self.mode]
        for pct in levels:
            if not (isinstance(pct, (int, float)) and math.isfinite(pct) and 0 < pct <= 100):
                raise UsageError(f"--levels: {pct!r} is not a percentage in (0, 100]")
        if len(set(levels)) != len(levels):
            raise UsageError("--levels: a level appears twice")
        return tuple(float(p) for p in levels)


@dataclass
class ProfileEvent:
    """Progress for a display: ``kind`` is "start", "level", "poll", "job-level", "done"."""

    kind: str
    job: str | None = None
    level: float | None = None
    steps: int = 0
    min_steps: int = 0
    status: str | None = None
    group: list[str] | None = None
    elapsed_s: float = 0.0
    note: str | None = None


Sink = Callable[[ProfileEvent], None]


def parse_levels(text: str) -> tuple[float, ...]:
    """``"100,50,14"`` -> (100.0, 50.0, 14.0); a bad item is a UsageError naming it."""
    out = []
    for item in text.split(","):
        item = item.strip().rstrip("%")
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--levels: {item!r} is not a number", hint="e.g. 100,50,14") from None
        if not (math.isfinite(value) and 0 < value <= 100):
            raise UsageError(f"--levels: {item} is not a percentage in (0, 100]")
        out.append(value)
    if not out:
        raise UsageError("--levels: name at least one level", hint="e.g. 100,50,14")
    return tuple(out)


def groups_of(jobs: Sequence[JobSpec], mode: str) -> list[list[JobSpec]]:
    """The runs: up to seven jobs together (co-located), or one job each (solo)."""
    size = MAX_COLOCATED if mode == "colocated" else 1
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


def profiling_device(drv: Any, i: int) -> tuple[str, str]:
    """(UUID, description) of the device to profile on GPU ``i``: the GPU or its one 7g instance."""
    info = drv.gpu(i)
    if not info.uuid:
        raise GpuBusy(f"GPU {i} reports no UUID; cannot pin jobs to it")
    if not info.mig_current:
        return info.uuid, f"GPU {i} ({info.name})"
    full = drv.gpu_model(i).compute_slices
    insts = drv.instances(i)
    whole = [x for x in insts if x.uuid and x.slice is not None and x.slice.slices == full]
    if len(insts) == 1 and whole:
        return whole[0].uuid, f"GPU {i} MIG {whole[0].slice.profile}"
    shown = ", ".join((x.profile or "?") for x in insts) or "no instances"
    raise GpuBusy(
        f"GPU {i} has MIG on with {shown}; MPS profiling needs the whole GPU or "
        "one full-size instance",
        hint=f"apply a single {full}g instance first, or profile another GPU with --gpu-index",
    )


# ---------------------------------------------------------------- one job at one level
@dataclass
class _Run:
    job: JobSpec
    level: float
    work: Path
    attempt: int
    resumed: bool
    launched: Any = None
    tracker: Any = None
    exit_file: Path | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, step) after warm-up
    first_step: float | None = None
    exit: dict[str, Any] | None = None
    peak_nvml: float | None = None
    started: float = 0.0
    ended: float | None = None
    stopped_by_us: bool = False
    checkpointed: bool = False
    error: str | None = None

    @property
    def measured_steps(self) -> int:
        if len(self.samples) < 2:
            return 0
        return int(self.samples[-1][1] - self.samples[0][1])

    def step_time_s(self) -> float | None:
        rates = [
            (t1 - t0) / (s1 - s0)
            for (t0, s0), (t1, s1) in zip(self.samples, self.samples[1:], strict=False)
            if s1 > s0 and t1 > t0
        ]
        return statistics.median(rates) if rates else None


class NoMps:
    """Stands in for the MPS daemon when jobs run on MIG instances: no client settings."""

    notes: list[str] = []

    def client_env(self, level: float) -> dict[str, str]:
        return {}

    def alive(self) -> bool:
        return True


@dataclass
class Measurement:
    """What :meth:`Profiler.measure` found for one job on one device."""

    job: JobSpec
    device: str
    result: LevelResult
    # The job saved a checkpoint and stopped cleanly: a next run may resume from it.
    checkpointed: bool = False


class Profiler:
    """Profiles jobs on one GPU of ``drv`` (see the module docstring)."""

    def __init__(
        self,
        drv: Any,
        state_dir: Path,
        settings: ProfileSettings,
        *,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.drv = drv
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.levels = settings.resolved_levels()
        self.sink = sink or (lambda event: None)
        self.clock = clock
        self.notes: list[str] = []
        self.work_root = self.state_dir / "profiles" / "work"
        if settings.speedup is not None and not drv.is_simulated:
            raise UsageError("--speedup applies to simulated GPUs only")
        self.scale = float(settings.speedup or 10.0) if drv.is_simulated else 1.0

    # ------------------------------------------------------------ public
    def profile(self, jobs: Sequence[JobSpec]) -> list[JobProfile]:
        """Measure ``jobs`` (in groups); returns one :class:`JobProfile` per job, in order."""
        from miso_cli.gpu import mps
        from miso_cli.spec.profiles_store import fingerprint

        if not jobs:
            return []
        i = self.settings.gpu_index
        if not 0 <= i < self.drv.device_count():
            raise UsageError(
                f"--gpu-index: no GPU {i} (this machine has {self.drv.device_count()})"
            )
        device, where = profiling_device(self.drv, i)
        busy = self.drv.processes(i)
        if busy:
            pids = ", ".join(str(p.pid) for p in busy[:5])
            raise GpuBusy(
                f"{where} runs other processes (pid {pids}); they would distort the profile",
                hint="profile when the GPU is idle, or on another GPU with --gpu-index",
            )
        daemon = mps.open_daemon(
            self.state_dir,
            device,
            simulated=self.drv.is_simulated,
            sim_state=self.drv.sim_state_path,
        )
        results: dict[str, JobProfile] = {}
        self.sink(ProfileEvent("start", group=[j.name for j in jobs], note=where))
        with daemon:
            self.notes.extend(daemon.notes)
            for group in groups_of(jobs, self.settings.mode):
                names = [j.name for j in group]
                for job in group:
                    results[job.name] = JobProfile(
                        job=job.name,
                        fingerprint=fingerprint(job),
                        mode=self.settings.mode,
                        workload=job.workload,
                        co_runners=[n for n in names if n != job.name],
                        started_at=self.clock(),
                    )
                self._profile_group(group, device, daemon, results)
                for job in group:
                    results[job.name].finished_at = self.clock()
        self.notes.extend(n for n in daemon.notes if n not in self.notes)
        self.sink(ProfileEvent("done"))
        return [results[j.name] for j in jobs]

    def measure(
        self,
        placements: Sequence[tuple[JobSpec, str]],
        *,
        level: float = 100.0,
        daemon: Any | None = None,
        attempts: Mapping[str, int] | None = None,
        resume: Mapping[str, bool] | None = None,
        fresh: bool = True,
    ) -> list[Measurement]:
        """Run jobs together, each on its device, until their step times are measured.

        ``placements``: (job, device) pairs; a device is what the job's
        ``CUDA_VISIBLE_DEVICES`` gets (a MIG instance's UUID, or the GPU under MPS).
        ``daemon``: the MPS daemon whose client settings give each job ``level`` %
        active threads; ``None`` runs the jobs without MPS (on MIG instances, where
        ``level`` is only a label). The jobs run until each has ``min_steps``
        measured steps after warm-up or ``max_level_s`` passes, then are asked to
        save and stop. ``fresh``: start from an empty work directory
        (``<state>/profiles/work/<job>``); otherwise the directory is kept, for a
        job that resumes from the checkpoint it saved there (``resume``).
        ``attempts``: the attempt number each job is told. Returns one
        :class:`Measurement` per placement, in order.
        """
        if daemon is None:
            daemon = NoMps()
        runs: list[_Run] = []
        try:
            for job, device in placements:
                work = self.work_root / job.name
                if fresh:
                    shutil.rmtree(work, ignore_errors=True)
                (work / "checkpoint").mkdir(parents=True, exist_ok=True)
                run = _Run(
                    job,
                    level,
                    work,
                    (attempts or {}).get(job.name, 1),
                    resumed=bool((resume or {}).get(job.name, False)),
                )
                self._start(run, device, daemon)
                runs.append(run)
            self._watch(runs, daemon)
        finally:
            self._stop_all(runs)
        return [
            Measurement(run.job, device, self._result(run), checkpointed=run.checkpointed)
            for run, (_, device) in zip(runs, placements, strict=True)
        ]

    # ------------------------------------------------------------ internals
    def _profile_group(
        self, group: list[JobSpec], device: str, daemon: Any, results: dict[str, JobProfile]
    ) -> None:
        workdirs = {}
        for job in group:
            work = self.work_root / job.name
            shutil.rmtree(work, ignore_errors=True)
            (work / "checkpoint").mkdir(parents=True, exist_ok=True)
            workdirs[job.name] = work
        attempts = dict.fromkeys(workdirs, 0)
        resumable = dict.fromkeys(workdirs, False)
        dropped: dict[str, str] = {}  # job -> why it is not run at later levels
        for level in self.levels:
            active = [j for j in group if j.name not in dropped]
            for j in group:
                if j.name in dropped:
                    results[j.name].levels.append(
                        LevelResult(level, "skipped", reason=dropped[j.name])
                    )
            if not active:
                continue
            self.sink(ProfileEvent("level", level=level, group=[j.name for j in active]))
            for job in active:
                attempts[job.name] += 1
            measured = self.measure(
                [(job, device) for job in active],
                level=level,
                daemon=daemon,
                attempts=attempts,
                resume=resumable,
                fresh=False,  # the work directory carries the checkpoint between levels
            )
            for m in measured:
                res, name = m.result, m.job.name
                results[name].levels.append(res)
                self.sink(
                    ProfileEvent(
                        "job-level",
                        job=name,
                        level=level,
                        steps=res.steps,
                        status=res.status,
                    )
                )
                if res.status in ("oom", "failed"):
                    dropped[name] = f"{res.status} at {level:g}%"
                # resume next level from the save only if the job stopped cleanly after it
                resumable[name] = bool(m.job.checkpoint and m.checkpointed)

    def _start(self, run: _Run, device: str, daemon: Any) -> None:
        from miso_cli.runtime import launch

        job, work = run.job, run.work
        progress_file = work / "progress.jsonl"
        progress_file.touch()
        values = {
            "checkpoint_dir": str(work / "checkpoint"),
            "job": job.name,
            "attempt": run.attempt,
        }
        extra = {
            "MISO_PROGRESS_FILE": str(progress_file),
            "MISO_CHECKPOINT_DIR": str(work / "checkpoint"),
            "MISO_PROFILE_LEVEL": f"{run.level:g}",
        }
        extra.update(daemon.client_env(run.level))
        if self.drv.is_simulated and self.drv.sim_state_path is not None:
            extra["MISO_SIM_STATE"] = str(self.drv.sim_state_path)
            extra["MISO_SIM_SPEEDUP"] = repr(self.scale)
        argv = launch.job_argv(job, resume=run.resumed, values=values)
        env = launch.job_env(
            job,
            base=os.environ,
            device=device,
            attempt=run.attempt,
            resume=run.resumed,
            values=values,
            extra=extra,
            run_as=launch.run_as_from_env(os.environ, os.geteuid()),
        )
        header = (
            f"\n=== miso profile: {job.name} at {run.level:g}% active threads "
            f"(attempt {run.attempt}) on {device} ===\n"
        )
        run.exit_file = work / f"exit-{run.attempt}.json"
        run.started = time.monotonic()
        try:
            run.launched = launch.launch(
                job,
                argv=argv,
                env=env,
                log_path=work / "job.log",
                exit_file=run.exit_file,
                tag=f"profile/{job.name}/{run.attempt}",
                header=header,
                run_as=launch.run_as_from_env(os.environ, os.geteuid()),
            )
        except OSError as exc:
            run.error = f"cannot start: {exc.strerror or exc}"
            run.exit = {"exit_code": 127}
            run.ended = time.monotonic()
            return
        from miso_cli.runtime.progress import ProgressTracker

        run.tracker = ProgressTracker(
            work / "job.log",
            progress_file,
            kind=job.progress,
            regex=job.progress_regex,
            steps=job.steps,
            log_offset=run.launched.log_offset,
            file_offset=progress_file.stat().st_size,
        )

    def _poll(self, run: _Run) -> None:
        tracker = run.tracker
        if tracker is None or run.ended is not None:
            return
        tracker.poll(time.time())
        for t, step in list(tracker.timer.samples):
            if run.samples and t <= run.samples[-1][0]:
                continue
            if run.first_step is None:
                run.first_step = step
            if step < run.first_step + self.settings.warmup_steps:
                continue  # warm-up: compilation, autotuning, loaders starting
            if not run.samples or step > run.samples[-1][1]:
                run.samples.append((t, step))

    def _exited(self, run: _Run) -> bool:
        from miso_cli.runtime import launch

        if run.ended is not None:
            return True
        popen = run.launched.popen if run.launched else None
        if popen is not None and popen.poll() is None:
            return False
        if popen is None and launch.is_alive(run.launched.pid, run.launched.create_time):
            return False
        self._poll(run)  # the last lines
        run.exit = launch.read_exit(run.exit_file) if run.exit_file else None
        if run.exit is None and popen is not None:
            rc = popen.returncode
            run.exit = {"exit_code": rc if rc >= 0 else None, "signal": -rc if rc < 0 else None}
        run.ended = time.monotonic()
        return True

    def _memory(self, runs: list[_Run]) -> None:
        import psutil

        try:
            procs = self.drv.processes(self.settings.gpu_index)
        except Exception:  # noqa: BLE001 - a failed sample is a missing value, not a failure
            return
        used = {p.pid: p.used_memory_mb for p in procs if p.used_memory_mb is not None}
        if not used:
            return
        for run in runs:
            if run.ended is not None or run.launched is None:
                continue
            try:
                root = psutil.Process(run.launched.pid)
                pids = {root.pid} | {c.pid for c in root.children(recursive=True)}
            except (psutil.Error, OSError):
                continue
            total = sum(float(used[p]) for p in pids if p in used)
            if total and (run.peak_nvml is None or total > run.peak_nvml):
                run.peak_nvml = total

    def _watch(self, runs: list[_Run], daemon: Any) -> None:
        s = self.settings
        t0 = time.monotonic()
        while True:
            time.sleep(s.poll_s)
            for run in runs:
                if not self._exited(run):
                    self._poll(run)
            self._memory(runs)
            elapsed = time.monotonic() - t0
            for run in runs:
                self.sink(
                    ProfileEvent(
                        "poll",
                        job=run.job.name,
                        level=run.level,
                        steps=run.measured_steps,
                        min_steps=s.min_steps,
                        elapsed_s=elapsed,
                    )
                )
            if not daemon.alive():
                for run in runs:
                    run.error = run.error or "the MPS control daemon died"
                self.notes.append(f"the MPS control daemon died at {runs[0].level:g}%")
                return
            running = [r for r in runs if r.ended is None]
            # co-located jobs keep running until all are measured: the interference is the point
            if not running or all(r.measured_steps >= s.min_steps for r in running):
                return
            if elapsed >= s.max_level_s:
                return

    def _stop_all(self, runs: list[_Run]) -> None:
        """Ask each running job to save and stop (its checkpoint signal), kill what stays."""
        from miso_cli.runtime import launch

        live = [r for r in runs if r.launched is not None and not self._exited(r)]
        deadline: dict[int, float] = {}
        now = time.monotonic()
        for r in live:
            r.stopped_by_us = True
            launch.send(r.launched.pid, r.job.stop_signal)
            grace = (
                r.job.grace_s if self.settings.stop_grace_s is None else self.settings.stop_grace_s
            )
            if not r.job.checkpoint:
                grace = min(grace, 5.0)  # nothing to save: do not wait long
            deadline[id(r)] = now + grace
        try:
            while live:
                live = [r for r in live if not self._exited(r)]
                for r in live:
                    if time.monotonic() > deadline[id(r)]:
                        launch.kill_group(r.launched.pid)
                if live:
                    time.sleep(0.05)
        finally:
            for r in runs:
                if r.launched is not None and r.ended is None:
                    launch.kill_group(r.launched.pid)
                    if r.launched.popen is not None:
                        try:
                            r.launched.popen.wait(timeout=5)
                        except Exception:  # noqa: BLE001 - best effort on the way out
                            pass
                    r.ended = time.monotonic()
                # leaving the group's other processes behind would hold GPU memory
                if r.launched is not None:
                    launch.kill_group(r.launched.pid)
        for r in runs:
            if r.stopped_by_us and r.exit is not None and r.job.checkpoint:
                # the wrapper recorded how it ended: a clean exit after the signal = saved
                r.checkpointed = r.exit.get("exit_code") == 0

    def _log_tail(self, run: _Run, limit: int = 65536) -> str:
        path = run.work / "job.log"
        try:
            with open(path, "rb") as fh:
                start = run.launched.log_offset if run.launched else 0
                fh.seek(max(start, os.path.getsize(path) - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _result(self, run: _Run) -> LevelResult:
        s = self.settings
        wall = ((run.ended or time.monotonic()) - run.started) if run.started else 0.0
        tail = self._log_tail(run)
        step = run.step_time_s()
        step_s = step * self.scale if step is not None else None
        peak, source = run.peak_nvml, "nvml" if run.peak_nvml else None
        if peak is None:
            found = list(_PEAK.finditer(tail))
            if found:
                m = found[-1]
                unit = (m.group("u") or "MiB").lower()
                factor = {"mib": 1.0, "mb": 1e6 / 2**20, "gib": 1024.0, "gb": 1e9 / 2**20}[unit]
                peak, source = float(m.group("v")) * factor, "job"
        res = LevelResult(
            run.level,
            "ok",
            step_time_s=step_s,
            steps=run.measured_steps,
            peak_memory_mb=peak,
            memory_source=source,
            wall_s=wall,
        )
        code = (run.exit or {}).get("exit_code")
        died = run.exit is not None and not run.stopped_by_us and code != 0
        if run.error:
            res.status, res.reason = "failed", run.error
        elif died:
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [""]
            if _OOM.search(tail):
                res.status, res.reason = "oom", "out of GPU memory: " + last[0][:200]
            else:
                sig = (run.exit or {}).get("signal")
                how = f"signal {sig}" if sig else f"exit {code}"
                res.status, res.reason = "failed", f"{how}: {last[0][:200]}".rstrip(": ")
        elif res.steps < s.min_steps:
            finished = run.exit is not None and not run.stopped_by_us and code == 0
            if finished and step_s is not None:
                res.reason = f"the job finished after {res.steps} measured steps"
            elif finished:
                res.status = "failed"
                res.reason = "the job exited before reporting enough progress to measure"
            else:
                res.status = "timeout"
                res.reason = (
                    f"{res.steps} of {s.min_steps} steps measured in {s.max_level_s:g} s"
                    if step_s is not None or res.steps
                    else f"no progress reported in {s.max_level_s:g} s"
                )
        return res


def install_sigterm_as_interrupt() -> Callable[[], None]:
    """Treat SIGTERM like Ctrl-C while profiling (so the daemon and jobs are stopped)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)
