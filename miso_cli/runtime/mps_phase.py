"""MPS profiling in real time: the phase ``miso run`` runs when a policy asks for one.

A :class:`~miso_cli.policy.core.GpuTarget` with ``profile_s`` puts a GPU's jobs
under one MPS daemon and measures each at the profiling levels (100, 50 and
14 % of the SMs, :data:`miso_cli.sim.simulator.PROFILE_LEVELS`), all jobs at each
level together, as the virtual-clock simulator does, so both drivers feed the
policy the same facts: co-located step times, turned into a prediction per
slice size by the predictor, and a ``profiled`` event at the end.

An active-thread percentage is fixed when a CUDA context is created, so each
level starts the jobs again (their checkpoint signal, then a resume). The
levels run from the smallest share to 100 %, so that after the phase the jobs
already run at the share the policies give a GPU in MPS mode (100 %) and need
no further restart when the policy leaves them there.

When a level ends is the engine's rule (:mod:`miso_cli.engine.core`: ``profile_s``
divided among the levels, and, under ``miso run``, at least until every job has a
few measured step intervals after its warm-up, :data:`MIN_INTERVALS`); this module
only measures: a job that finishes or fails during the phase is left out of it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.engine.rules import PROFILE_LEVELS, PROFILE_ORDER

# Smallest share first: the last level leaves the jobs at 100 %, the share they keep.
RUN_ORDER: tuple[int, ...] = PROFILE_ORDER
WARMUP_SAMPLES = 1  # progress records skipped after each start (imports, first step)
MIN_INTERVALS = 3  # measured intervals per job and level before the level may end


@dataclass
class ProfilePhase:
    """One GPU's profiling phase: which level runs, and what each job measured."""

    gpu: int
    jobs: list[str]
    level_s: float  # wall seconds per level, nominal (the engine decides when one ends)
    started_at: float
    levels: tuple[int, ...] = RUN_ORDER
    k: int = 0  # index into levels
    switching: bool = True  # jobs are being (re)started at levels[k]
    level_started: float | None = None
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # records taken since the start
    measured: dict[str, dict[int, float]] = field(default_factory=dict)  # wall s per step
    counts: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return self.levels[self.k]

    @property
    def last(self) -> bool:
        return self.k == len(self.levels) - 1

    def begin_level(self, now: float) -> None:
        self.switching = False
        self.level_started = now
        self.samples = {j: [] for j in self.jobs}
        self.seen = dict.fromkeys(self.jobs, 0)

    def add(self, job: str, t: float, step: float) -> None:
        """One progress record of ``job`` (time, step) at the current level."""
        if job not in self.seen or self.level_started is None or t < self.level_started:
            return
        self.seen[job] += 1
        if self.seen[job] <= WARMUP_SAMPLES:
            return
        pts = self.samples[job]
        if not pts or (step > pts[-1][1] and t > pts[-1][0]):
            pts.append((t, step))

    def close_level(self) -> None:
        """Turn the level's samples into each job's step time there."""
        for job in self.jobs:
            pts = self.samples.get(job, [])
            rates = [
                (t1 - t0) / (s1 - s0)
                for (t0, s0), (t1, s1) in zip(pts, pts[1:], strict=False)
                if s1 > s0 and t1 > t0
            ]
            if rates:
                self.measured.setdefault(job, {})[self.level] = statistics.median(rates)
                self.counts.setdefault(job, {})[self.level] = int(pts[-1][1] - pts[0][1])

    def drop(self, job: str) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        self.samples.pop(job, None)
        self.seen.pop(job, None)

    def complete(self, job: str) -> bool:
        return all(lv in self.measured.get(job, {}) for lv in PROFILE_LEVELS)


def stored_profile(
    spec: Any,
    *,
    co_runners: Sequence[Any],
    step_times_s: dict[int, float],
    steps: dict[int, int],
    gpu_model: str,
    gpu_name: str,
    driver_version: str | None,
    simulated: bool,
    started_at: float,
) -> Any:
    """A profile store entry for what the phase measured (``step_times_s`` scaled)."""
    from miso_cli.spec import profiles_store as store

    levels = [
        {
            "level": float(lv),
            "status": "ok",
            "step_time_s": step_times_s[lv],
            "steps": steps.get(lv, 0),
            "peak_memory_mb": None,
            "memory_source": None,
            "wall_s": 0.0,
            "reason": None,
        }
        for lv in PROFILE_LEVELS
    ]
    return store.StoredProfile(
        fingerprint=store.fingerprint(spec),
        job=spec.name,
        command=spec.command,
        cwd=str(Path(spec.cwd).expanduser().resolve()),
        env=dict(spec.env),
        gpu_model=gpu_model,
        gpu_name=gpu_name,
        driver_version=driver_version,
        mode="colocated",
        co_runners=[store.fingerprint(c) for c in co_runners],
        levels=levels,
        started_at=started_at,
        finished_at=time.time(),
        simulated=simulated,
    )


def workload_name(spec: Any) -> str:
    """What observations call the job: its catalog workload, else its fingerprint."""
    if spec.workload:
        return str(spec.workload)
    cmd = spec.command if isinstance(spec.command, list) else str(spec.command).split()
    for i, arg in enumerate(cmd[:-1]):
        if arg == "--workload":
            return str(cmd[i + 1])
    from miso_cli.spec.profiles_store import fingerprint

    return f"job-{fingerprint(spec)}"
