"""``miso plan QUEUE``: plan a queue file on the GPUs there, from its jobs' MPS profiles.

The use case behind the command (driver, profile store, predictor, then the
pure planner); :mod:`miso_cli.planning.planner` only plans. Returns typed results and
never prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from miso_cli.planning.planner import (
    OBJECTIVES,
    Plan,
    PlanGpu,
    PlanJob,
    estimate_mean_jct,
    estimate_nopart_mean_jct,
    plan,
)

PROFILE_LEVELS_PCT = (100, 50, 14)


@dataclass
class QueuePlan:
    """A queue planned on the GPUs there: the ``miso plan --json`` data and its parts."""

    data: dict[str, Any]
    result: Plan
    jobs: dict[str, PlanJob]
    simulated: bool = False  # planned on simulated GPUs: times are the catalog's seconds


def _store_profile(
    state_dir: Any,
    spec: Any,
    prof: Any,
    info: Any,
    drv: Any,
    fps: Mapping[str, str],
    gpu_model: str,
) -> None:
    from pathlib import Path

    from miso_cli.spec import profiles_store as store

    store.save(
        Path(state_dir),
        store.StoredProfile(
            fingerprint=prof.fingerprint,
            job=prof.job,
            command=spec.command,
            cwd=str(Path(spec.cwd).expanduser().resolve()),
            env=dict(spec.env),
            gpu_model=gpu_model,
            gpu_name=info.name,
            driver_version=drv.driver_version(),
            mode=prof.mode,
            co_runners=[fps[n] for n in prof.co_runners if n in fps],
            levels=[lv.to_json() for lv in prof.levels],
            started_at=prof.started_at,
            finished_at=prof.finished_at,
            simulated=bool(drv.is_simulated),
        ),
    )


def queue_plan(
    queue_spec: Any,
    gpu_spec: str | None,
    state_dir: Any,
    *,
    model: Any = None,
    objective: str = "jct",
    risk: float = 0.5,
    fifo: bool = False,
    profile: bool = False,
) -> QueuePlan:
    """Plan a loaded queue on the GPUs of ``gpu_spec`` from its jobs' MPS profiles.

    Profiles come from the store (fresh ones); with ``profile`` the jobs without
    one are measured now under MPS and stored. A job with no profile is a
    UsageError naming the queue file.
    """
    from pathlib import Path

    from miso_cli.errors import UsageError
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.predict import load_predictor
    from miso_cli.spec.profiles_store import fingerprint, fresh_profiles

    if objective not in OBJECTIVES:
        raise UsageError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    sdir = Path(state_dir)
    spec = queue_spec
    label = getattr(spec, "path", None) or "the queue"
    drv = open_driver(gpu_spec, sdir)
    try:
        gpus = []
        for i in range(drv.device_count()):
            info = drv.gpu(i)
            m = drv.gpu_model(i)
            current = drv.current_layout(i) if info.mig_current else None
            gpus.append(PlanGpu(i, m, current or PlanGpu(i, m).layout))
        key = gpus[0].model.key if gpus else None
        stored = fresh_profiles(
            sdir,
            spec.jobs,
            gpu_model=key,
            driver_version=drv.driver_version(),
        )
        measured: dict[str, tuple[dict[int, float], int, float | None]] = {}
        for name, prof in stored.items():
            times = {lv: prof.step_time_s(lv) for lv in PROFILE_LEVELS_PCT}
            if all(t for t in times.values()):
                measured[name] = (
                    {k: float(v) for k, v in times.items()},
                    1 + len(prof.co_runners),
                    prof.peak_memory_mb(),
                )
        missing = [j for j in spec.jobs if j.name not in measured]
        if missing and profile:
            from miso_cli.runtime.profiler import Profiler, ProfileSettings

            settings = ProfileSettings(
                mode="colocated", levels=tuple(map(float, PROFILE_LEVELS_PCT))
            )
            fps = {j.name: fingerprint(j) for j in missing}
            by_name = {j.name: j for j in missing}
            info0 = drv.gpu(0)
            for prof in Profiler(drv, sdir, settings).profile(missing):
                _store_profile(sdir, by_name[prof.job], prof, info0, drv, fps, key or info0.name)
                times = {lv: prof.step_time_s(lv) for lv in PROFILE_LEVELS_PCT}
                if all(t for t in times.values()):
                    measured[prof.job] = (
                        {k: float(v) for k, v in times.items()},
                        1 + len(prof.co_runners),
                        prof.peak_memory_mb,
                    )
            missing = [j for j in spec.jobs if j.name not in measured]
    finally:
        close = getattr(drv, "close", None)
        if close:
            close()
    if missing:
        names = ", ".join(j.name for j in missing[:5])
        names += ", ..." if len(missing) > 5 else ""  # issue-15b: a cut list says so
        raise UsageError(
            f"{label}: no fresh profile for {len(missing)} job(s) ({names})",
            hint=f"run 'miso profile {label}' first, or pass --profile to profile them now",
        )
    pred = load_predictor(model, key or "a100-40gb", sdir)
    jobs: list[PlanJob] = []
    for j in spec.jobs:
        mps, n_mix, peak = measured[j.name]
        memory = j.memory_mb if j.memory_mb is not None else peak
        p = pred.predict_one(mps, jobs_in_mix=n_mix, memory_mb=memory, gpu_model=gpus[0].model)
        remaining = j.steps * mps[100] if j.steps else None
        jobs.append(
            PlanJob(
                j.name,
                dict(p.relative),
                dict(p.uncertainty),
                memory_mb=memory,
                remaining_s=remaining,
            )
        )
    result = plan(gpus, jobs, objective=objective, fifo=fifo, risk=risk)
    by_job = {j.name: j for j in jobs}
    slowdowns = [by_job[n].relative[s.slices] for g in result.gpus for n, s in g.assignment.items()]
    data: dict[str, Any] = {
        "gpus": [g.to_json(by_job) for g in result.gpus],
        "waiting": result.waiting,
        "objective": objective,
        "policy": "miso+",
        "predicted": {
            "mean_slowdown": sum(slowdowns) / len(slowdowns) if slowdowns else None,
            "mean_jct_s": estimate_mean_jct(result, jobs),
            "nopart_mean_jct_s": estimate_nopart_mean_jct(len(gpus), jobs),
        },
        "predictor": dict(getattr(pred, "metadata", {}) or {}),
    }
    return QueuePlan(data, result, by_job)


def queue_plan_data(
    queue_spec: Any, gpu_spec: str | None, state_dir: Any, **options: Any
) -> dict[str, Any]:
    """The data of ``miso plan QUEUE --json`` for a loaded queue (options as :func:`queue_plan`)."""
    return queue_plan(queue_spec, gpu_spec, state_dir, **options).data


def plan_queue(queue_spec: Any, gpu_spec: str | None, state_dir: Any, **options: Any) -> QueuePlan:
    """``miso plan QUEUE``: :func:`queue_plan`, and what its predicted times are.

    ``data["predicted"]`` also says the time base (``gpu`` seconds, or ``catalog``
    seconds on simulated GPUs) and, when there is no predicted completion time, why.
    """
    planned = queue_plan(queue_spec, gpu_spec, state_dir, **options)
    planned.simulated = bool(gpu_spec and gpu_spec.strip().lower().startswith("sim:"))
    pr = planned.data["predicted"]
    # Seconds of GPU time at the profiled speed. On a simulated GPU those are the
    # catalog's seconds: a run of synthetic jobs takes 1/--speedup of them in wall time.
    pr["time_base"] = "catalog" if planned.simulated else "gpu"
    pr["unknown_reason"] = (
        unknown_reason(queue_spec, planned.result, planned.jobs)
        if pr["mean_jct_s"] is None
        else None
    )
    return planned


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, d, e, ... (7 in all)``: a list cut short says so."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def unknown_reason(spec: Any, result: Plan, jobs: dict[str, PlanJob]) -> str:
    """Why the plan has no predicted completion time, naming the jobs."""
    no_steps = [j.name for j in spec.jobs if not j.steps]
    if no_steps:
        verb = "has" if len(no_steps) == 1 else "have"
        return f"give each job 'steps': {short_list(no_steps)} {verb} none"
    stuck = [
        n
        for n in result.waiting
        if not any(jobs[n].fits(g.model, s.slices) for g in result.gpus for s in g.layout.slices)
    ]
    if stuck:
        return (
            f"no instance of this layout fits waiting {short_list(stuck)}: it starts after a "
            "re-plan, which this estimate does not cover"
        )
    return "a waiting job fits no instance that frees up in this layout"
