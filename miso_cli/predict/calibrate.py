"""Calibration: measure workloads under MPS and on every MIG slice size of this GPU, then fit.

1. The GPU must be MIG-capable and idle. Its layout (and MIG mode) is noted.
2. One full-size instance is applied and the calibration jobs are profiled under
   MPS with :class:`miso_cli.runtime.profiler.Profiler`: each job alone (``jobs_in_mix`` 1)
   and all together in mixes of up to seven (as MISO profiles), at 100/50/14 %.
3. For each standard slice size, a layout of as many instances of that size as
   fit is applied and the jobs run on them, one per instance (instances are
   isolated, so jobs on different ones do not disturb each other's step time);
   a job that runs out of memory on a size does not fit it.
4. The original layout (and mode) is restored, whatever happened.
5. The pairs are written to ``<state>/calibration/<gpu model>-<time>.csv`` in the
   data contract of ``miso fit``, and a model is fitted on every calibration file
   of this GPU model plus the stored observations.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, GpuBusy, NoGpu, UsageError
from miso_cli.gpu.layouts import Layout
from miso_cli.spec.queue import JobSpec

LEVELS = (100.0, 50.0, 14.0)


@dataclass
class CalibrationSettings:
    speedup: float | None = None  # simulated GPUs: synthetic jobs run this much faster
    min_steps: int = 10
    warmup_steps: int = 2
    max_level_s: float = 30.0
    mixes: bool = True  # also profile the jobs together (co-located), not only alone


@dataclass
class CalibrationResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # CSV rows, data contract
    csv_path: Path | None = None
    restored: bool = False
    original_layout: str = ""
    notes: list[str] = field(default_factory=list)
    statuses: dict[str, dict[str, str]] = field(default_factory=dict)  # job -> what -> status


def calibration_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "calibration"


def calibration_files(state_dir: Path, gpu_model_key: str) -> list[Path]:
    return sorted(calibration_dir(state_dir).glob(f"{gpu_model_key}-*.csv"))


def synthetic_jobs(catalog: Path, trainer: Path) -> list[JobSpec]:
    """One synthetic job (``examples/sim_train.py``) per workload of ``catalog``."""
    from miso_cli.spec.catalog import load_catalog

    if not trainer.exists():
        raise UsageError(
            f"{trainer}: the synthetic trainer is missing (a source checkout has it)",
            hint="pass --queue with your own calibration jobs",
        )
    cat = load_catalog(catalog)
    return [
        JobSpec(
            name=f"cal-{name}",
            command=[
                sys.executable,
                str(trainer),
                "--workload",
                name,
                "--steps",
                "1000000",
                "--catalog",
                str(catalog.resolve()),
            ],
            workload=name,
        )
        for name in cat.workloads
    ]


def calibrate(
    drv: Any,
    i: int,
    state_dir: Path,
    jobs: Sequence[JobSpec],
    settings: CalibrationSettings,
    *,
    progress: Callable[[str], None] = lambda line: None,
) -> CalibrationResult:
    """Measure ``jobs`` under MPS and on each slice size of GPU ``i``; store the pairs."""
    from miso_cli.gpu.apply import apply_layout
    from miso_cli.gpu.layouts import place
    from miso_cli.runtime.profiler import Profiler, ProfileSettings

    if not jobs:
        raise BadInput("no calibration jobs")
    if len({j.name for j in jobs}) != len(jobs):
        raise BadInput("calibration jobs need distinct names")
    if not 0 <= i < drv.device_count():
        raise UsageError(f"--gpu-index: no GPU {i} (this machine has {drv.device_count()})")
    info = drv.gpu(i)
    if not info.mig_capable:
        raise NoGpu(f"GPU {i} ({info.name}) is not MIG-capable: there is nothing to calibrate")
    busy = drv.processes(i)
    if busy:
        pids = ", ".join(str(p.pid) for p in busy[:5])
        raise GpuBusy(
            f"GPU {i} runs other processes (pid {pids}); calibration needs it idle",
            hint="wait until they finish, then run miso calibrate again",
        )
    model = drv.gpu_model(i)
    mig_was_on = bool(info.mig_current)
    original = drv.current_layout(i) if mig_was_on else Layout(())
    result = CalibrationResult(original_layout=original.name if mig_was_on else "MIG off")
    profiler = Profiler(
        drv,
        state_dir,
        ProfileSettings(
            mode="solo",
            levels=LEVELS,
            warmup_steps=settings.warmup_steps,
            min_steps=settings.min_steps,
            max_level_s=settings.max_level_s,
            speedup=settings.speedup,
            poll_s=0.1,  # short jobs: a coarse poll would dominate the wall time
            gpu_index=i,
        ),
    )
    full = model.full_profile
    solo: dict[str, dict[int, float]] = {}
    mixed: list[tuple[str, int, dict[str, dict[int, float]]]] = []
    mig: dict[str, dict[int, float | None]] = {j.name: {} for j in jobs}
    status = result.statuses
    from miso_cli.runtime.locks import hold_gpus  # issue-11: one miso at a time changes a GPU

    gpu_hold = hold_gpus(drv, [i], "calibrate", note=progress)  # issue-11
    gpu_hold.__enter__()  # issue-11: released in the finally below
    try:
        progress(f"applying one {full.name} instance for MPS profiling")
        report = apply_layout(drv, i, place(model, [full.name]))
        if report.pending_reset:
            raise NoGpu(
                f"GPU {i}: enabling MIG mode needs a GPU reset first",
                hint="reset the GPU (nvidia-smi -r) or reboot, then run miso calibrate again",
            )
        progress(f"profiling {len(jobs)} jobs alone under MPS at 100/50/14 %")
        for prof in profiler.profile(jobs):
            status.setdefault(prof.job, {})["mps_solo"] = _status(prof)
            levels = _levels(prof)
            if levels:
                solo[prof.job] = levels
        if settings.mixes and len(jobs) > 1:
            progress(f"profiling the {len(jobs)} jobs together under MPS")
            profiler.settings.mode = "colocated"
            profs = profiler.profile(jobs)
            groups: dict[tuple[str, ...], dict[str, dict[int, float]]] = {}
            for prof in profs:
                status.setdefault(prof.job, {})["mps_mix"] = _status(prof)
                key = tuple(sorted([prof.job, *prof.co_runners]))
                levels = _levels(prof)
                if levels:
                    groups.setdefault(key, {})[prof.job] = levels
            for n, (key, members) in enumerate(groups.items()):
                mixed.append((f"m{n}", len(key), members))
        for prof_g in sorted(model.standard_profiles(), key=lambda p: -p.slices):
            count = min(len(jobs), prof_g.instance_count)
            layout = _fill(model, prof_g.name, count)
            progress(f"measuring on {prof_g.name} ({layout.name})")
            apply_layout(drv, i, layout)
            devices = [m.uuid for m in drv.instances(i) if m.uuid]
            if not devices:
                raise NoGpu(f"GPU {i}: {layout.name} applied but no instance has a UUID")
            for start in range(0, len(jobs), len(devices)):
                batch = list(zip(jobs[start : start + len(devices)], devices, strict=False))
                # Instances are isolated: jobs on different ones run at once, without MPS.
                for m in profiler.measure(batch):
                    res, job = m.result, m.job.name
                    status.setdefault(job, {})[prof_g.compute_name] = res.status
                    mig[job][prof_g.slices] = res.step_time_s if res.status == "ok" else None
        result.notes.extend(profiler.notes)
    finally:
        try:
            progress(f"restoring {result.original_layout}")
            _restore(drv, i, original, mig_was_on)
            result.restored = True
        finally:
            gpu_hold.__exit__(None, None, None)  # issue-11
    result.rows = _rows(jobs, solo, mixed, mig)
    if not result.rows:
        raise BadInput(
            "calibration measured nothing usable (no job has an MPS profile and a 7g time)",
            hint="see the job logs under <state dir>/profiles/work/",
        )
    result.csv_path = _write_csv(state_dir, drv.gpu_model(i).key, result.rows)
    return result


def _levels(prof: Any) -> dict[int, float]:
    out = {}
    for pct in LEVELS:
        t = prof.step_time_s(pct)
        if t is not None:
            out[int(pct)] = float(t)
    return out if 100 in out and len(out) >= 2 else {}


def _status(prof: Any) -> str:
    bad = [r.status for r in prof.levels if r.status != "ok"]
    return bad[0] if bad else "ok"


def _fill(model: Any, profile: str, count: int) -> Layout:
    """As many instances of ``profile`` as fit, at most ``count``."""
    from miso_cli.gpu.layouts import LayoutError, place

    for n in range(count, 0, -1):
        try:
            return place(model, [profile] * n)
        except LayoutError:
            continue
    raise NoGpu(f"{model.key}: no {profile} instance fits an empty GPU")


def _restore(drv: Any, i: int, original: Layout, mig_was_on: bool) -> None:
    from miso_cli.gpu.apply import apply_layout

    apply_layout(drv, i, original)
    if not mig_was_on:
        drv.set_mig_mode(i, False)


def _rows(
    jobs: Sequence[JobSpec],
    solo: dict[str, dict[int, float]],
    mixed: list[tuple[str, int, dict[str, dict[int, float]]]],
    mig: dict[str, dict[int, float | None]],
) -> list[dict[str, Any]]:
    """CSV rows in the data contract: solo rows, then one row per job per mix."""
    workload = {j.name: (j.workload or j.name) for j in jobs}
    rows: list[dict[str, Any]] = []

    def row(job: str, mix: str, n: int, mps: dict[int, float]) -> dict[str, Any] | None:
        times = mig.get(job, {})
        if times.get(7) is None:
            return None
        out: dict[str, Any] = {"mix": mix, "workload": workload[job], "jobs_in_mix": n}
        out.update({f"mps_{p}": mps.get(p) for p in (100, 50, 14)})
        out.update({f"mig_{g}g": times.get(g) for g in sorted(times, reverse=True)})
        return out

    for j in jobs:
        if j.name in solo and (r := row(j.name, "", 1, solo[j.name])):
            rows.append(r)
    for mix_id, n, members in mixed:
        for job, mps in members.items():
            if r := row(job, mix_id, n, mps):
                rows.append(r)
    return rows


def _write_csv(state_dir: Path, gpu_model_key: str, rows: list[dict[str, Any]]) -> Path:
    from miso_cli.runtime.state import atomic_write_text

    slices = sorted({int(k[4:-1]) for r in rows for k in r if k.startswith("mig_")}, reverse=True)
    cols = ["mix", "workload", "jobs_in_mix", "mps_100", "mps_50", "mps_14"]
    cols += [f"mig_{g}g" for g in slices]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = calibration_dir(state_dir) / f"{gpu_model_key}-{stamp}.csv"
    n = 1
    while path.exists():
        n += 1
        path = calibration_dir(state_dir) / f"{gpu_model_key}-{stamp}-{n}.csv"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(path, buf.getvalue(), mode=0o600)
    return path
