"""Profiling a queue: reuse fresh stored profiles, measure the rest under MPS, store them.

MPS profiling needs the whole GPU, or a single full-size MIG instance. A run leaves
its MIG layout in place, so after one the GPU is idle but split. With consent,
:func:`profiling_layout` returns such an idle GPU (no processes on it) to one
full-size instance for the measurement and puts the previous layout back
afterwards, on errors and on Ctrl-C too. It changes the GPU only through
:func:`miso_cli.gpu.apply.apply_layout` (transactional), and holds the state
directory's run lock meanwhile, so no ``miso run`` starts on a GPU being reshaped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import ExitCode, GpuBusy, UsageError
from miso_cli.spec.queue import JobSpec


@dataclass(frozen=True)
class LayoutOffer:
    """What consent is asked for: GPU ``gpu_index`` from ``current`` to ``whole`` and back."""

    gpu_index: int
    current: str  # the layout's name, e.g. "3g.20gb+2g.10gb+2g.10gb"
    whole: str  # the full-size instance profiling uses, e.g. "7g.40gb"

    def question(self) -> str:
        return (
            f"GPU {self.gpu_index} is idle but split ({self.current}); MPS profiling needs the "
            f"whole GPU. Switch it to one {self.whole} instance now, and back to "
            f"{self.current} afterwards?"
        )


Consent = Callable[[LayoutOffer], bool]


@dataclass
class LayoutReset:
    """What :func:`profiling_layout` did: the layout taken down, and whether it is back."""

    gpu_index: int
    previous: str
    profiled_on: str
    restored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu_index": self.gpu_index,
            "previous": self.previous,
            "profiled_on": self.profiled_on,
            "restored": self.restored,
        }


@dataclass
class ProfileReport:
    """What profiling a queue gave: each job's profile, measured now or reused."""

    gpu: dict[str, Any]  # index, name, model, driver_version, simulated
    mode: str  # "colocated" or "solo"
    levels: list[float]  # active-thread percentages
    measured: int
    reused: int
    profiles: list[dict[str, Any]]  # per job: JobProfile.to_json() and its failed levels
    notes: list[str]
    layout_reset: LayoutReset | None
    generated_at: float
    logs: Path  # where each job's log is kept: <logs>/<job>/job.log

    @property
    def failed_jobs(self) -> list[str]:
        """Jobs that failed, ran out of memory or timed out at some level."""
        return [p["job"] for p in self.profiles if p["failed_levels"]]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.JOBS_FAILED if self.failed_jobs else ExitCode.OK

    @property
    def errors(self) -> list[dict[str, Any]]:
        bad = self.failed_jobs
        if not bad:
            return []
        return [
            {
                "code": "JOBS_FAILED",
                "message": f"{len(bad)} job(s) failed, ran out of memory or timed out "
                f"at some level: {', '.join(bad)}",
                "hint": f"logs in {self.logs}/<job>/job.log",
            }
        ]

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso profile --json``."""
        return {
            "gpu": self.gpu,
            "mode": self.mode,
            "levels": self.levels,
            "measured": self.measured,
            "reused": self.reused,
            "profiles": self.profiles,
            "notes": self.notes,
            "layout_reset": self.layout_reset.to_json() if self.layout_reset else None,
            "generated_at": self.generated_at,
        }


def profile_settings(
    *,
    mode: str = "colocated",
    levels: str | None = None,
    warmup_steps: int = 3,
    min_steps: int = 20,
    max_time: str = "30s",
    speedup: float | None = None,
    gpu_index: int = 0,
) -> Any:
    """``miso profile``'s options checked, as :class:`~miso_cli.runtime.profiler.ProfileSettings`.

    ``levels`` is text such as ``100,50,14`` (None: the mode's default), ``max_time`` a
    duration (``30``, ``30s``, ``2m``). A bad value is a UsageError naming its option.
    """
    from miso_cli.commands import require_finite
    from miso_cli.runtime.profiler import ProfileSettings, parse_levels
    from miso_cli.spec.queue import parse_duration_s

    if mode not in ("colocated", "solo"):
        raise UsageError(f"--mode: {mode!r} is not one of colocated, solo")
    try:
        cap = parse_duration_s(max_time)
    except ValueError as exc:
        raise UsageError(f"--max-time: {exc}") from None
    if not cap > 0:
        raise UsageError("--max-time: must be positive")
    if speedup is not None and not speedup > 0:
        raise UsageError("--speedup: must be positive")
    require_finite(speedup=speedup)
    settings = ProfileSettings(
        mode=mode,
        levels=parse_levels(levels) if levels is not None else None,
        warmup_steps=warmup_steps,
        min_steps=min_steps,
        max_level_s=cap,
        speedup=speedup,
        gpu_index=gpu_index,
    )
    settings.resolved_levels()  # a level given twice is refused before anything runs
    return settings


def profile(
    gpu_spec: str | None,
    jobs: Sequence[JobSpec],
    state_dir: Path,
    settings: Any,
    *,
    refresh: bool = False,
    sink: Callable[[Any], None] | None = None,
    consent: Consent = lambda offer: False,
) -> ProfileReport:
    """``miso profile``: open the GPUs of ``gpu_spec`` and :func:`profile_queue` ``jobs``."""
    from miso_cli.gpu.nvml import open_driver

    drv = open_driver(gpu_spec, state_dir)
    try:
        return profile_queue(
            drv, jobs, state_dir, settings, refresh=refresh, sink=sink, consent=consent
        )
    finally:
        drv.close()


def missing_profile_settings() -> Any:
    """How ``miso plan --profile`` measures the jobs without a fresh profile."""
    from miso_cli.commands.plan import PROFILE_LEVELS_PCT
    from miso_cli.runtime.profiler import ProfileSettings

    return ProfileSettings(mode="colocated", levels=tuple(map(float, PROFILE_LEVELS_PCT)))


def profile_missing(
    gpu_spec: str | None,
    jobs: Sequence[JobSpec],
    state_dir: Path,
    *,
    sink: Callable[[Any], None] | None = None,
    consent: Consent = lambda offer: False,
) -> ProfileReport | None:
    """Profile (co-located, 100/50/14 %) the ``jobs`` without a fresh stored profile.

    None when there is no GPU or nothing to measure.
    """
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.spec.profiles_store import fresh_profiles

    settings = missing_profile_settings()
    drv = open_driver(gpu_spec, state_dir)
    try:
        if not drv.device_count():
            return None
        fresh = fresh_profiles(
            state_dir,
            jobs,
            gpu_model=drv.gpu_model(0).key,
            driver_version=drv.driver_version(),
            levels=settings.levels,
        )
        missing = [j for j in jobs if j.name not in fresh]
        if not missing:
            return None
        return profile_queue(drv, missing, state_dir, settings, sink=sink, consent=consent)
    finally:
        drv.close()


def blocking_layout(drv: Any, i: int) -> Any | None:
    """The MIG layout that keeps GPU ``i`` from MPS profiling, or None when it can profile."""
    info = drv.gpu(i)
    if not info.mig_current:
        return None
    full = drv.gpu_model(i).compute_slices
    insts = drv.instances(i)
    whole = [x for x in insts if x.uuid and x.slice is not None and x.slice.slices == full]
    if len(insts) == 1 and whole:
        return None
    return drv.current_layout(i)


@contextlib.contextmanager
def profiling_layout(
    drv: Any, i: int, state_dir: Path, consent: Consent
) -> Iterator[LayoutReset | None]:
    """Make GPU ``i`` profilable for the ``with`` block, with consent; restore it after.

    Yields None when the GPU can be profiled as it is. A split GPU with processes on
    it is refused (GPU_BUSY); an idle one is switched to one full-size instance if
    ``consent`` agrees (else GPU_BUSY, with the flag to pass), and switched back on
    the way out, whatever happens inside.
    """
    from miso_cli.gpu.apply import apply_layout
    from miso_cli.gpu.layouts import place

    layout = blocking_layout(drv, i)
    if layout is None:
        yield None
        return
    model = drv.gpu_model(i)
    full = model.full_profile.name
    shown = layout.name or "MIG on, no instances"
    busy = drv.processes(i)
    if busy:
        pids = ", ".join(str(p.pid) for p in busy[:5])
        raise GpuBusy(
            f"GPU {i} has MIG on with {shown} and processes on it (pid {pids}); MPS "
            "profiling needs the whole GPU",
            hint="profile when the GPU is idle, or on another GPU with --gpu-index",
        )
    offer = LayoutOffer(i, shown, full)
    if not consent(offer):
        raise GpuBusy(
            f"GPU {i} has MIG on with {shown}; MPS profiling needs the whole GPU or one "
            f"full-size instance",
            hint=f"pass --reset-layout to switch this idle GPU to one {full} instance for "
            f"profiling and back to {shown} afterwards",
        )
    lock = _run_lock(state_dir)
    try:
        reset = LayoutReset(i, shown, full)
        apply_layout(drv, i, place(model, [full]))
        try:
            yield reset
        finally:
            # Back as it was, also on Ctrl-C: profiling stopped its jobs on the way out.
            apply_layout(drv, i, layout)
            reset.restored = True
    finally:
        if lock is not None:
            lock.release()


def _run_lock(state_dir: Path) -> Any:
    """Hold the run lock while the layout is changed (a run in progress refuses the reset)."""
    from miso_cli.errors import MisoError
    from miso_cli.runtime.journal import RunLock

    lock = RunLock(state_dir)
    try:
        lock.acquire()
    except MisoError as exc:
        raise GpuBusy(
            f"cannot change the layout for profiling: {exc.message}",
            hint="profile after the run ends",
        ) from None
    return lock


def profile_queue(
    drv: Any,
    jobs: Sequence[JobSpec],
    state_dir: Path,
    settings: Any,
    *,
    refresh: bool = False,
    sink: Callable[[Any], None] | None = None,
    consent: Consent = lambda offer: False,
) -> ProfileReport:
    """Profile ``jobs`` on GPU ``settings.gpu_index``: what was measured, reused, stored.

    Jobs whose group all have fresh stored profiles (same co-runners, or alone) are
    reused; the others are measured and stored. ``consent`` is asked before an idle
    split GPU is switched to one full-size instance (see :func:`profiling_layout`).
    """
    from miso_cli.runtime.profiler import JobProfile, LevelResult, Profiler, groups_of
    from miso_cli.runtime.profiler import install_sigterm_as_interrupt as sigterm
    from miso_cli.spec import profiles_store as store

    sdir = Path(state_dir)
    levels = settings.resolved_levels()
    i = settings.gpu_index
    if not 0 <= i < drv.device_count():
        raise UsageError(f"--gpu-index: no GPU {i} (this machine has {drv.device_count()})")
    info = drv.gpu(i)
    gpu_model, driver = info.model_key or info.name, drv.driver_version()
    fps = {j.name: store.fingerprint(j) for j in jobs}

    # reuse: a group is measured again unless every job in it has a fresh profile
    # taken with the same co-runners (co-located) or alone (solo)
    todo, reused = [], {}
    for group in groups_of(jobs, settings.mode):
        stored = {}
        for j in group:
            prof = None if refresh else store.load(sdir, fps[j.name])
            co = [fps[o.name] for o in group if o.name != j.name]
            if prof is not None and prof.is_fresh(
                gpu_model=gpu_model,
                driver_version=driver,
                mode=settings.mode,
                levels=levels,
                co_runners=co,
            ):
                stored[j.name] = prof
        if len(stored) == len(group):
            reused.update(stored)
        else:
            todo.extend(group)

    measured: dict[str, JobProfile] = {}
    notes: list[str] = []
    reset: LayoutReset | None = None
    if todo:
        restore_sigterm = sigterm()  # SIGTERM stops jobs and restores the layout like Ctrl-C
        try:
            from miso_cli.runtime.locks import hold_gpus  # issue-11: one miso at a time per GPU

            gpu_notes: list[str] = []  # issue-11: an interrupted apply finished first
            with hold_gpus(drv, [i], "profile", note=gpu_notes.append):
                with profiling_layout(drv, i, sdir, consent) as reset:
                    prof = Profiler(drv, sdir, settings, sink=sink)
                    results = prof.profile(todo)
        finally:
            restore_sigterm()
        notes = gpu_notes + list(prof.notes)
        if reset is not None:
            notes.append(
                f"GPU {i} was switched from {reset.previous} to one {reset.profiled_on} "
                f"instance for profiling, and back"
            )
        by_name = {j.name: j for j in todo}
        for r in results:
            measured[r.job] = r
            job = by_name[r.job]
            store.save(
                sdir,
                store.StoredProfile(
                    fingerprint=r.fingerprint,
                    job=r.job,
                    command=job.command,
                    cwd=str(Path(job.cwd).resolve()),
                    env=dict(job.env),
                    gpu_model=gpu_model,
                    gpu_name=info.name,
                    driver_version=driver,
                    mode=r.mode,
                    co_runners=[fps[n] for n in r.co_runners],
                    levels=[lv.to_json() for lv in r.levels],
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                    simulated=drv.is_simulated,
                ),
            )
    items = []
    names = {fp: n for n, fp in fps.items()}
    for j in jobs:
        if j.name in measured:
            p = measured[j.name]
        else:
            s = reused[j.name]
            p = JobProfile(
                job=j.name,
                fingerprint=s.fingerprint,
                mode=s.mode,
                workload=j.workload,
                co_runners=[names.get(fp, fp) for fp in s.co_runners],
                levels=[LevelResult.from_json(lv) for lv in s.levels if lv["level"] in levels],
                started_at=s.started_at,
                finished_at=s.finished_at,
                reused=True,
            )
        item = p.to_json()
        item["failed_levels"] = [f"{r.level:g}" for r in p.levels if r.status != "ok"]
        items.append(item)
    return ProfileReport(
        gpu={
            "index": i,
            "name": info.name,
            "model": gpu_model,
            "driver_version": driver,
            "simulated": drv.is_simulated,
        },
        mode=settings.mode,
        levels=list(levels),
        measured=len(measured),
        reused=len(reused),
        profiles=items,
        notes=notes,
        layout_reset=reset,
        generated_at=time.time(),
        logs=sdir / "profiles" / "work",
    )
